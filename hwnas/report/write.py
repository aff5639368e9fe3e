"""The report folder of a study: Pareto plots, Markdown and one self-contained HTML page
(tables.py, plot.py, page.py)."""

from __future__ import annotations

from pathlib import Path

import optuna

from hwnas.report.page import html_page
from hwnas.report.plot import pareto_plots
from hwnas.report.tables import Report, markdown_report


def write_report(study: optuna.Study, out_dir: Path, run_dir: Path | None = None) -> dict[str, Path]:
    """``run_dir``: the run folder (its exported/ is what the page links to); by default the
    folder above ``out_dir``, where `hwnas report` writes."""
    from hwnas.llm.report import is_language_study, write_llm_report

    if is_language_study(study):  # its own figures: tokens/s, perplexity (hwnas/llm)
        return write_llm_report(study, out_dir)
    report = Report.of(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = pareto_plots(report, out_dir)
    markdown = markdown_report(report, plots)
    md_path = out_dir / "report.md"
    md_path.write_text(markdown)
    html_path = out_dir / "report.html"
    html_path.write_text(html_page(report, plots, out_dir, run_dir or out_dir.parent))
    return {"plot": plots[0], "markdown": md_path, "html": html_path,
            **{f"plot_{p.stem}": p for p in plots[1:]}}
