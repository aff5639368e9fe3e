"""A model as a picture: one bar per unit (stage, layer, head group), its height the fraction
of channels kept and its colour the precision, as a small inline SVG (no network, no library)."""

from __future__ import annotations

import html

from hwnas.knobs.candidate import Candidate

# precision -> fill; a precision not named here is drawn grey and still named in the tooltip
PRECISION_COLOURS = {"fp32": "#4c72b0", "fp16": "#55a868", "bf16": "#8172b3",
                     "a16w8": "#ccb974", "int8": "#dd8452", "int4": "#c44e52"}
OTHER_COLOUR = "#999999"
BAR_WIDTH, GAP, HEIGHT, LABEL = 32, 4, 60, 28


def units(candidate: Candidate) -> list[tuple[str, float, str]]:
    """(unit, keep ratio, precision) for every unit a knob names, in the candidate's order;
    a unit no width knob cuts keeps all its channels, one no plan names stays fp32."""
    keep = {**dict(candidate.keep_ratios), **dict(candidate.head_keep_ratios),
            **dict(candidate.mlp_keep_ratios)}
    plan = dict(candidate.precision_plan)
    names = list(dict.fromkeys([*keep, *plan]))
    return [(name, float(keep.get(name, 1.0)), str(plan.get(name, "fp32"))) for name in names]


def unit_svg(candidate: Candidate, trial: int | None) -> str:
    """The picture of one candidate: bars on a 0..1 keep-ratio scale, unit names beneath."""
    drawn = units(candidate)
    width = max(120, len(drawn) * (BAR_WIDTH + GAP) + GAP)
    parts = [f'<svg class="units" data-trial="{trial}" '
             f'width="{width}" height="{HEIGHT + LABEL}" viewBox="0 0 {width} {HEIGHT + LABEL}" '
             f'role="img" aria-label="trial {trial}: keep ratio and precision per unit">',
             f'<rect x="0" y="0" width="{width}" height="{HEIGHT}" fill="#f4f4f4"/>']
    for index, (name, keep, precision) in enumerate(drawn):
        x = GAP + index * (BAR_WIDTH + GAP)
        bar = max(1.0, keep * HEIGHT)
        colour = PRECISION_COLOURS.get(precision, OTHER_COLOUR)
        tip = html.escape(f"{name}: keep {keep:g}, {precision}")
        parts.append(f'<rect class="unit" x="{x}" y="{HEIGHT - bar:.1f}" width="{BAR_WIDTH}" '
                     f'height="{bar:.1f}" fill="{colour}" data-unit="{html.escape(name)}" '
                     f'data-keep="{keep:g}" data-precision="{html.escape(precision)}">'
                     f'<title>{tip}</title></rect>')
        short = html.escape(name if len(name) <= 6 else name[:5] + "…")
        parts.append(f'<text x="{x + BAR_WIDTH / 2}" y="{HEIGHT + 11}" font-size="7.5" '
                     f'text-anchor="middle">{short}</text>')
        parts.append(f'<text x="{x + BAR_WIDTH / 2}" y="{HEIGHT + 22}" font-size="7.5" '
                     f'text-anchor="middle" fill="#555">{html.escape(precision)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def colour_key() -> str:
    """The legend of every picture, once per page (HTML)."""
    swatches = "".join(
        f'<span class="swatch" style="background:{colour}"></span>{html.escape(name)} '
        for name, colour in PRECISION_COLOURS.items())
    return (f'<p class="key">Bar height: fraction of channels kept (1.0 = the base model\'s '
            f'width); colour: precision. {swatches}'
            f'<span class="swatch" style="background:{OTHER_COLOUR}"></span>other</p>')
