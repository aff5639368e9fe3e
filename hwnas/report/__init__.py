"""Reports of a search, read from TrialOutcome records: terminal table, Pareto plot (PNG),
Markdown and HTML (tables.py, plot.py, html.py), and model cards (card.py)."""

from hwnas.report.tables import Report, text_table, why_nothing_fits
from hwnas.report.write import write_report

__all__ = ["Report", "text_table", "why_nothing_fits", "write_report"]
