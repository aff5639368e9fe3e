"""The report folder of a study: Pareto plots, Markdown and HTML (tables.py, plot.py, html.py)."""

from __future__ import annotations

from pathlib import Path

import optuna

from hwnas.report.html import html_report
from hwnas.report.plot import pareto_plots
from hwnas.report.tables import Report, markdown_report


def write_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
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
    html_path.write_text(html_report(markdown, report.name))
    return {"plot": plots[0], "markdown": md_path, "html": html_path,
            **{f"plot_{p.stem}": p for p in plots[1:]}}
