"""The sensitivity heatmap (hwnas/report/heatmap.py) on a hand-made table: one cell per unit
and setting with its figures, a failed variant marked, worse cells redder, the colour scale
beside the grid, and the page and Markdown of a study that keeps one show it."""

import re

import optuna

from hwnas.report.heatmap import colour, heatmap_svg
from hwnas.report.page import html_page
from hwnas.report.tables import Report, markdown_report
from hwnas.sensitivity import ATTR, KEEP, PRECISION, SensitivityCell, UnitSensitivity

TABLE = UnitSensitivity("k" * 64, "w" * 64, 0.95, 128, "CPUExecutionProvider on the controller", (
    SensitivityCell("stage1", PRECISION, "int8", 0.999, 0.99, 1.0, 0.95, 0.0, 1000),
    SensitivityCell("stage1", KEEP, "0.5", 0.90, 0.5, 0.9, 0.85, 0.10, 800),
    SensitivityCell("head", PRECISION, "int8", 0.98, 0.9, 0.97, 0.93, 0.02, 900),
    SensitivityCell("head", KEEP, "0.5", error="cannot prune the classifier")))


def _red(fill: str) -> tuple[int, int, int]:
    return tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))


def test_each_cell_carries_its_figures_and_worse_is_redder():
    svg = heatmap_svg(TABLE)
    cells = re.findall(r'<rect class="cell" x="([\d.]+)" y="[\d.]+" width="([\d.]+)" '
                       r'height="[\d.]+" fill="(#[0-9a-f]{6})" data-unit="([^"]+)" '
                       r'data-setting="([^"]+)"', svg)
    assert {(u, s) for *_, u, s in cells} == {("stage1", "int8"), ("stage1", "keep 0.5"),
                                              ("head", "int8"), ("head", "keep 0.5")}
    fills = {(u, s): f for _x, _w, f, u, s in cells}
    # green channel falls with harm: the 10-point drop is the reddest, the untouched the palest
    assert _red(fills["stage1", "keep 0.5"])[1] < _red(fills["head", "int8"])[1] \
        < _red(fills["stage1", "int8"])[1]
    assert 'data-failed="1"' in svg and "cannot prune the classifier" in svg
    assert "+10.0 pt" in svg and "cos 0.90000" in svg
    right = max(float(x) + float(w) for x, w, *_ in cells)
    scale = float(re.search(r'<g class="scale"><text x="([\d.]+)"', svg).group(1))
    assert scale > right  # the legend never sits over a cell
    assert colour(0.0) == "#ffffff" and _red(colour(1.0))[1] < 30


def test_a_study_that_keeps_one_shows_it_on_the_page_and_in_markdown(tmp_path):
    study = optuna.create_study()
    study.set_user_attr(ATTR, {TABLE.key: TABLE.to_dict()})
    report = Report.of(study)
    assert report.sensitivity == (TABLE,)
    page = html_page(report, [], tmp_path, tmp_path)
    assert "Per-unit sensitivity" in page and '<svg class="sensitivity"' in page
    markdown = markdown_report(report, [])
    assert "keep 0.5: drop / cos" in markdown and "0.1000 / 0.90000" in markdown
    assert "head keep 0.5 failed: cannot prune the classifier" in markdown
