"""Per-unit sensitivity as a heatmap: units as rows, settings (precisions, keep ratios) as
columns, each cell coloured by its accuracy drop (where accuracy did not fall: by 1 - cosine)
and labelled with both figures; a small inline SVG (no network, no library), its colour scale
drawn beside the grid, never over it."""

from __future__ import annotations

import html

from hwnas.sensitivity import SensitivityCell, UnitSensitivity

ROW_LABEL, CELL_W, CELL_H, HEADER, SCALE_GAP, SCALE_W = 120, 92, 34, 30, 24, 150
FAILED_FILL, EMPTY_FILL = "#d9d9d9", "#ffffff"


def _harm(cell: SensitivityCell, drop_full: float, cosine_full: float) -> float:
    """0 (untouched) .. 1 (as bad as the worst cell of the table): the accuracy drop, or where
    it is nil, the outputs' distance (1 - cosine) on its own scale, kept below the drops'."""
    drop = max(0.0, cell.accuracy_drop or 0.0)
    if drop > 0 and drop_full > 0:
        return min(1.0, drop / drop_full)
    distance = max(0.0, 1.0 - (cell.cosine_mean if cell.cosine_mean is not None else 1.0))
    return 0.0 if cosine_full <= 0 else 0.25 * min(1.0, distance / cosine_full)


def colour(harm: float) -> str:
    """White through amber to red: harmless cells stay pale."""
    harm = min(1.0, max(0.0, harm))
    if harm < 0.5:  # white -> amber
        t = harm / 0.5
        r, g, b = 255, round(255 - t * (255 - 190)), round(255 - t * 255)
    else:  # amber -> red
        t = (harm - 0.5) / 0.5
        r, g, b = round(255 - t * 55), round(190 - t * 170), round(t * 20)
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(found: UnitSensitivity) -> str:
    units, settings = found.units(), found.settings()
    measured = [c for c in found.cells if c.error is None]
    drop_full = max([c.accuracy_drop or 0.0 for c in measured] + [0.0])
    cosine_full = max([1.0 - c.cosine_mean for c in measured if c.cosine_mean is not None] + [0.0])
    grid_w = ROW_LABEL + CELL_W * len(settings)
    width = grid_w + SCALE_GAP + SCALE_W
    height = HEADER + CELL_H * len(units) + 4
    parts = [f'<svg class="sensitivity" width="{width}" height="{max(height, 90)}" '
             f'viewBox="0 0 {width} {max(height, 90)}" role="img" '
             f'aria-label="per-unit sensitivity: accuracy drop and cosine per unit and setting">']
    for column, setting in enumerate(settings):
        x = ROW_LABEL + column * CELL_W + CELL_W / 2
        parts.append(f'<text x="{x}" y="{HEADER - 10}" font-size="11" text-anchor="middle" '
                     f'font-weight="bold">{html.escape(setting)}</text>')
    for row, unit in enumerate(units):
        y = HEADER + row * CELL_H
        parts.append(f'<text x="{ROW_LABEL - 6}" y="{y + CELL_H / 2 + 4}" font-size="11" '
                     f'text-anchor="end">{html.escape(unit if len(unit) <= 18 else unit[:17] + "…")}'
                     f'<title>{html.escape(unit)}</title></text>')
        for column, setting in enumerate(settings):
            parts.append(_cell(found.cell(unit, setting), ROW_LABEL + column * CELL_W, y,
                               unit, setting, drop_full, cosine_full))
    parts.append(_scale(grid_w + SCALE_GAP, HEADER, drop_full))
    parts.append("</svg>")
    return "".join(parts)


def _cell(cell: SensitivityCell | None, x: float, y: float, unit: str, setting: str,
          drop_full: float, cosine_full: float) -> str:
    where = f'x="{x + 1}" y="{y + 1}" width="{CELL_W - 2}" height="{CELL_H - 2}"'
    data = f'data-unit="{html.escape(unit)}" data-setting="{html.escape(setting)}"'
    if cell is None:  # a setting this unit does not take (the head has no keep ratio)
        return (f'<rect class="cell" {where} fill="{EMPTY_FILL}" stroke="#ddd" {data}/>'
                f'<text x="{x + CELL_W / 2}" y="{y + CELL_H / 2 + 4}" font-size="10" '
                f'text-anchor="middle" fill="#999">n/a</text>')
    if cell.error is not None:
        tip = html.escape(f"{unit} at {setting} failed: {cell.error}")
        return (f'<rect class="cell" {where} fill="{FAILED_FILL}" {data} data-failed="1">'
                f'<title>{tip}</title></rect><text x="{x + CELL_W / 2}" y="{y + CELL_H / 2 + 4}" '
                f'font-size="10" text-anchor="middle">failed</text>')
    drop, cosine = cell.accuracy_drop or 0.0, cell.cosine_mean or 0.0
    tip = html.escape(f"{unit} at {setting}: accuracy drop {drop:+.4f}, cosine mean {cosine:.5f} "
                      f"(min {cell.cosine_min or 0.0:.4f}), top-1 agreement "
                      f"{cell.top1_agreement or 0.0:.1%}")
    harm = _harm(cell, drop_full, cosine_full)
    ink, faint = ("#ffffff", "#ffffff") if harm > 0.6 else ("#222222", "#444444")  # legible
    return (f'<rect class="cell" {where} fill="{colour(harm)}" {data} data-drop="{drop:.6f}" '
            f'data-cosine="{cosine:.6f}"><title>{tip}</title></rect>'
            f'<text x="{x + CELL_W / 2}" y="{y + 14}" font-size="10.5" text-anchor="middle" '
            f'fill="{ink}">{drop * 100:+.1f} pt</text>'
            f'<text x="{x + CELL_W / 2}" y="{y + 27}" font-size="9" text-anchor="middle" '
            f'fill="{faint}">cos {cosine:.5f}</text>')


def _scale(x: float, y: float, drop_full: float) -> str:
    """The colour scale, to the right of the grid."""
    steps = 10
    parts = [f'<g class="scale"><text x="{x}" y="{y - 10}" font-size="10">accuracy drop</text>']
    for i in range(steps):
        parts.append(f'<rect x="{x + i * 12}" y="{y}" width="12" height="12" '
                     f'fill="{colour(i / (steps - 1))}" stroke="none"/>')
    parts.append(f'<text x="{x}" y="{y + 24}" font-size="9">0</text>')
    parts.append(f'<text x="{x + steps * 12}" y="{y + 24}" font-size="9" text-anchor="end">'
                 f'{drop_full * 100:.1f} pt</text>')
    parts.append(f'<text x="{x}" y="{y + 40}" font-size="9" fill="#555">pale amber: accuracy '
                 f'did not fall,</text><text x="{x}" y="{y + 51}" font-size="9" fill="#555">'
                 f'outputs moved (1 - cos)</text></g>')
    return "".join(parts)


def sensitivity_section(tables: tuple[UnitSensitivity, ...]) -> list[str]:
    """The report page's section: one heatmap per kept table (one per base model and
    settings), with what it shows."""
    if not tables:
        return []
    parts = ["<h2>Per-unit sensitivity (each unit changed alone, no fine-tune)</h2>",
             "<p class='note'>Each cell: the base model with only that unit at that precision or "
             "keep ratio, exported as a trial is and read with onnxruntime on held-out samples "
             "against the unchanged base model's bytes. Top: accuracy drop in points (base minus "
             "variant); bottom: mean cosine similarity of the outputs. Hover a cell for the worst "
             "sample's cosine and the top-1 agreement.</p>"]
    for found in tables:
        parts.append(f"<p class='note'>Base accuracy {found.base_accuracy:.4f} on "
                     f"{found.samples} held-out samples; {html.escape(found.runtime)}.</p>")
        parts.append(f"<div class='heatmap'>{heatmap_svg(found)}</div>")
    return parts
