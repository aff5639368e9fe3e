"""Reports of a search, read from TrialOutcome records: terminal and Markdown tables (tables.py),
Pareto plots (plot.py, PNG), HTML (html.py), the report folder (write.py), model cards
(card.py), a study's progress (status.py) and optuna-dashboard (dashboard.py)."""

from hwnas.report.tables import Report, text_table, why_nothing_fits
from hwnas.report.write import write_report

__all__ = ["Report", "text_table", "why_nothing_fits", "write_report"]
