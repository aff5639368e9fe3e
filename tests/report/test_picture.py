"""The per-unit picture and the page parts, without a search (fast)."""

from __future__ import annotations

import re

from hwnas.knobs.candidate import Candidate
from hwnas.report.html import html_report, table
from hwnas.report.picture import PRECISION_COLOURS, unit_svg, units


def test_every_unit_is_a_bar_its_height_the_keep_ratio_its_colour_the_precision():
    candidate = Candidate.build({"stage1": 0.25, "stage2": 1.0}, "l1", 0.0,
                                {"stage1": "int8", "stage2": "fp16", "head": "fp32"})
    assert units(candidate) == [("stage1", 0.25, "int8"), ("stage2", 1.0, "fp16"),
                                ("head", 1.0, "fp32")]  # head: no width knob, all kept
    svg = unit_svg(candidate, 7)
    bars = re.findall(r'<rect class="unit" x="[^"]+" y="[^"]+" width="\d+" height="([^"]+)" '
                      r'fill="([^"]+)" data-unit="([^"]+)"', svg)
    assert [(float(h), fill, unit) for h, fill, unit in bars] == [
        (15.0, PRECISION_COLOURS["int8"], "stage1"), (60.0, PRECISION_COLOURS["fp16"], "stage2"),
        (60.0, PRECISION_COLOURS["fp32"], "head")]
    assert svg.startswith('<svg class="units" data-trial="7"') and "http" not in svg


def test_a_unit_the_plan_leaves_out_stays_fp32_and_names_are_escaped():
    candidate = Candidate.build({"a<b": 0.5}, "l1", 0.0, {})
    assert units(candidate) == [("a<b", 0.5, "fp32")]
    assert "a<b" not in unit_svg(candidate, 1) and "a&lt;b" in unit_svg(candidate, 1)


def test_tables_are_sortable_and_numbers_align_right():
    html = table(["trial", "note"], [["3", "<b>"]])
    assert "<table class='sortable'>" in html and "<td class='num'>3</td>" in html
    assert "&lt;b&gt;" in html


def test_a_markdown_report_inlines_its_images(tmp_path):
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    page = html_report("# t\n\n![Pareto front](p.png)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
                       "t", tmp_path)
    assert 'src="data:image/png;base64,' in page and "p.png" not in page
    assert "<script>" in page and "table.sortable" in page
