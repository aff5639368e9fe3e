"""Issue 24.3: the HTML report of a real tiny search is one self-contained page (no URL it
could fetch), with the base model on every plot and legends outside the axes, a picture per
front model, sortable tables, reasons, power provenance, model-card links and the three
fidelity figures; headless Chromium renders it without a console message or a network request,
and writes report.png beside it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.report import Report
from hwnas.run import RunFolder

ROOT = Path(__file__).resolve().parents[2]


def hwnas(*args: object, timeout: int = 900) -> str:
    """The CLI of this checkout (not an installed one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "agents")])}
    done = subprocess.run([sys.executable, "-m", "hwnas.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A real 5-trial digits search, one front trial exported, then `hwnas report`."""
    from hwnas.report import Report
    from hwnas.run import RunFolder
    from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

    folder = tmp_path_factory.mktemp("report")
    space, device = folder / "digits.yaml", folder / "device.yaml"
    # with the per-unit sensitivity (int8 per stage, keep 0.5 per width stage): its heatmap
    space.write_text(DIGITS_SPACE + ENQUEUED.replace(
        "search:\n", "search:\n  sensitivity: {keep_ratios: [0.5], samples: 128}\n"))
    device.write_text(FAST_DEVICE)
    run_dir = folder / "run"
    hwnas("search", space, "--device", device, "--run-dir", run_dir, "--no-progress")
    report = Report.of(RunFolder.load(run_dir).open_study())
    assert report.front, "the enqueued int8 candidate meets the budgets: the front is not empty"
    hwnas("export", run_dir, "--trial", report.front[0].number)
    hwnas("report", run_dir)
    return run_dir, report


def test_the_base_model_is_a_point_on_every_plot_and_legends_sit_outside(reported):
    import matplotlib

    matplotlib.use("Agg")
    from hwnas.report.plot import BASE_LABEL, base_point, pareto_figure, plot_metrics

    _, report = reported
    assert report.study.base_model_measurement is not None
    for metric in plot_metrics(report):
        point = base_point(report, metric)
        assert point is not None and point[1] == report.study.base_model_test_accuracy
        figure, axes = pareto_figure(report, metric)
        try:
            base = [c for c in axes.collections if c.get_gid() == "base-model"]
            assert len(base) == 1 and tuple(base[0].get_offsets()[0]) == pytest.approx(point)
            legend = axes.get_legend()
            assert BASE_LABEL in [t.get_text() for t in legend.get_texts()]
            figure.canvas.draw()
            renderer = figure.canvas.get_renderer()
            # the legend starts right of the axes: it never covers a point
            assert legend.get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1
        finally:
            import matplotlib.pyplot as plt

            plt.close(figure)


def test_the_page_is_self_contained_with_plots_inline(reported):
    run_dir, _ = reported
    page = (run_dir / "report" / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    plots = sorted((run_dir / "report").glob("pareto*.png"))
    assert plots and page.count('src="data:image/png;base64,') == len(plots)
    assert "<link rel='stylesheet'" not in page and "<script src" not in page


def test_each_front_model_is_drawn_unit_by_unit(reported):
    from hwnas.report.picture import units

    run_dir, report = reported
    page = (run_dir / "report" / "report.html").read_text()
    for outcome in report.front:
        svg = re.search(rf'<svg class="units" data-trial="{outcome.number}".*?</svg>', page, re.S)
        assert svg, f"no picture of front trial {outcome.number}"
        drawn = re.findall(r'data-unit="([^"]+)" data-keep="([^"]+)" data-precision="([^"]+)"',
                           svg.group(0))
        expected = units(outcome.candidate)
        assert [(u, float(k), p) for u, k, p in drawn] == [(u, k, p) for u, k, p in expected]
        assert {"stage1", "stage2", "stage3"} <= {u for u, _, _ in drawn}


def test_tables_sort_and_show_the_three_fidelity_figures(reported):
    from hwnas.report.html import SORT_SCRIPT

    run_dir, report = reported
    page = (run_dir / "report" / "report.html").read_text()
    assert SORT_SCRIPT.strip() in page and "<table class='sortable'>" in page
    for header in ("fidelity cos", "cos min", "top-1 agree"):
        assert f"<th scope='col'>{header}</th>" in page
    fidelity = next(o.output_fidelity for o in report.outcomes if o.output_fidelity)
    assert f"{fidelity.cosine_min:.4f}" in page and f"{fidelity.top1_agreement:.1%}" in page
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "| cos min | top-1 agree |" in markdown


def test_reasons_power_and_model_card_links(reported):
    run_dir, report = reported
    page = (run_dir / "report" / "report.html").read_text()
    assert "Failures, rejections and broken budgets" in page
    rejected = [o for o in report.outcomes if o.rejection]
    for outcome in rejected:
        assert outcome.rejection.replace("'", "&#x27;")[:40] in page
    assert "Power: where the figures come from" in page and "power.source" in page
    exported = report.front[0]
    card = f"../exported/{report.name}-trial{exported.number}.card.json"
    assert f'href="{card}"' in page and (run_dir / "report" / card).is_file()
    for outcome in report.front[1:]:
        assert f"--trial {outcome.number}</code>" in page


def test_the_sensitivity_heatmap_shows_every_kept_cell_beside_its_scale(reported):
    run_dir, report = reported
    (found,) = report.sensitivity
    assert {c.setting for c in found.cells} == {"int8", "keep 0.5"}
    assert {"stage1", "stage2", "stage3", "head"} <= set(found.units())
    page = (run_dir / "report" / "report.html").read_text()
    svg = re.search(r'<svg class="sensitivity".*?</svg>', page, re.S)
    assert svg, "no sensitivity heatmap on the page"
    cells = re.findall(r'<rect class="cell" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"[^>]*'
                       r'data-unit="([^"]+)" data-setting="([^"]+)" data-drop="([^"]+)"', svg.group(0))
    assert len(cells) == len(found.cells)
    for _x, _w, unit, setting, drop in cells:
        assert float(drop) == pytest.approx(found.cell(unit, setting).accuracy_drop, abs=1e-6)
    right = max(float(x) + float(w) for x, w, *_ in cells)
    scale = re.search(r'<g class="scale"><text x="([\d.]+)"', svg.group(0))
    assert float(scale.group(1)) > right  # the colour scale sits right of the grid
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "## Per-unit sensitivity" in markdown and "keep 0.5: drop / cos" in markdown


def test_hwnas_sensitivity_reads_the_search_s_table_back_without_measuring(reported):
    run_dir, report = reported
    out = hwnas("sensitivity", run_dir, "--samples", 128, "--keep-ratios", 0.5, "--no-progress")
    assert "kept in the study already: nothing measured" in out and "keep 0.5: drop / cos" in out
    assert Report.of(RunFolder.load(run_dir).open_study()).sensitivity == report.sensitivity


CHROMIUM = shutil.which("chromium")
QUIET = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND"]


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked for (the browser's own update and account pings are keyed
    by another network isolation key than the file:// page's)."""
    events = json.loads(net_log.read_text())["events"]
    return sorted({e["params"]["url"] for e in events
                   if "url" in e.get("params", {})
                   and str(e["params"].get("network_isolation_key", "")).startswith("file://")})


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium "
                                             "(scripts/setup.sh installs it)")
def test_chromium_renders_it_without_console_messages_or_network(reported, tmp_path):
    run_dir, _ = reported
    page = run_dir / "report" / "report.html"
    screenshot = page.with_name("report.png")
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    subprocess.run([CHROMIUM, *QUIET, *profile, f"--screenshot={screenshot}",
                    "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    net_log = tmp_path / "net.json"
    done = subprocess.run([CHROMIUM, *QUIET, *profile, "--enable-logging=stderr", "--v=0",
                           f"--log-net-log={net_log}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # the page logs nothing: any message is an error or a warning
    assert "<table class=\"sortable\">" in done.stdout  # the DOM was rendered, script ran
    assert page_requests(net_log) == []


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium")
def test_the_check_sees_a_console_error_and_a_fetch(tmp_path):
    """The check above can fail: a page that logs an error and fetches an image trips both."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><link rel='icon' href='data:,'><img src='https://example."
                    "invalid/x.png'><script>console.error('broken')</script>")
    net_log = tmp_path / "net.json"
    done = subprocess.run([CHROMIUM, *QUIET, "--user-data-dir=" + str(tmp_path / "profile"),
                           "--enable-logging=stderr", "--v=0", f"--log-net-log={net_log}",
                           "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)
    assert any(":CONSOLE" in line and "broken" in line for line in done.stderr.splitlines())
    assert page_requests(net_log) == ["https://example.invalid/x.png"]
