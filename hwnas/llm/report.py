"""The report of a language model's search: every trial's figures, the Pareto front (those
that meet every budget, best next-token accuracy against the study's other objectives), the
front's perplexity on the held-out test text, and plots of quality against each measured
objective. Written to the run's report folder as Markdown, HTML, JSON and PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna

from hwnas import metrics
from hwnas.budgets import describe_excess
from hwnas.pareto import pareto_front, study_directions
from hwnas.records import TrialStage
from hwnas.report.tables import aligned, fmt
from hwnas.run import outcomes

COLUMNS = ("trial", "stage", "budgets", "val next-token acc", "val ppl", "test ppl", "MB",
           "decode tok/s", "TTFT p90 ms", "peak MB", "candidate")


def is_language_study(study: optuna.Study) -> bool:
    return study.user_attrs.get("model_family") == "causal_lm"


def _figure(value: float | None, spec: str) -> str:
    return fmt(None if isinstance(value, float) and math.isnan(value) else value, spec)


def rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One JSON-ready row per finished trial, in trial order."""
    tested = study.user_attrs.get("llm_test") or {}
    records = outcomes(study)
    front = {o.number for o in pareto_front(records, study_directions(study))}
    found = []
    for trial, outcome in zip(study.get_trials(deepcopy=False), records):
        if outcome.stage in (TrialStage.RUNNING, TrialStage.WAITING):
            continue
        llm = trial.user_attrs.get("llm") or {}
        measurement = outcome.measurement
        found.append({
            "trial": trial.number, "stage": outcome.stage.value, "front": trial.number in front,
            "budgets": outcome.rejection or outcome.failure or
            ("meets" if all(v <= 0 for v in (trial.constraints or {}).values())
             else describe_excess(dict(trial.constraints))),
            "next_token_accuracy_val": outcome.accuracy_val,
            "perplexity_val": llm.get("perplexity_val"),
            "perplexity_test": (tested.get(str(trial.number)) or {}).get("perplexity"),
            "next_token_accuracy_test": (tested.get(str(trial.number)) or {}).get(
                "next_token_accuracy"),
            "model_size_mb": outcome.artifact.size_mb if outcome.artifact else None,
            "decode_tokens_per_s": getattr(measurement, "decode_tokens_per_s", None),
            "ttft_ms_p90": getattr(measurement, "ttft_ms_p90", None),
            "peak_memory_mb": getattr(measurement, "peak_memory_mb", None),
            "energy_mj_per_token": getattr(measurement, "energy_mj_per_token", None),
            "candidate": outcome.candidate.summary() if outcome.candidate else "",
            "slice_plan": llm.get("slice_plan"), "precision_plan": llm.get("precision_plan"),
            "heal": llm.get("heal"), "folder": llm.get("folder"),
            "device": outcome.device})
    return found


def text_table(found: list[dict[str, Any]]) -> str:
    cells = [[str(r["trial"]) + ("*" if r["front"] else ""), r["stage"], r["budgets"],
              _figure(r["next_token_accuracy_val"], ".4f"), _figure(r["perplexity_val"], ".2f"),
              _figure(r["perplexity_test"], ".2f"), _figure(r["model_size_mb"], ".2f"),
              _figure(r["decode_tokens_per_s"], ".1f"), _figure(r["ttft_ms_p90"], ".1f"),
              _figure(r["peak_memory_mb"], ".0f"), r["candidate"]] for r in found]
    return aligned([list(COLUMNS), *cells])


def summary(study: optuna.Study) -> str:
    found = rows(study)
    front = [r for r in found if r["front"]]
    head = ("Pareto front (* meets every budget; quality: next-token accuracy of the exported "
            "folder on the val text):" if front else
            "No trial meets every budget yet; all trials (see their budgets column):")
    return f"{head}\n{text_table(found)}"


def _plot(found: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in found if r.get(metric) is not None and r["perplexity_val"] is not None]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for front, style, label in ((False, dict(color="0.6", marker="o"), "evaluated"),
                                (True, dict(color="tab:red", marker="*", s=140), "front")):
        chosen = [r for r in points if r["front"] == front]
        if chosen:
            axes.scatter([r[metric] for r in chosen], [r["perplexity_val"] for r in chosen],
                         label=label, **style)
    for r in points:
        axes.annotate(str(r["trial"]), (r[metric], r["perplexity_val"]), fontsize=7,
                      xytext=(3, 3), textcoords="offset points")
    axes.set_xlabel(metrics.get(metric).axis() if metrics.find(metric) else metric)
    axes.set_ylabel("perplexity of the exported folder (val text, lower is better)")
    # right of the axes: a legend never covers a point
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _layers_picture(found: list[dict[str, Any]], path: Path) -> Path | None:
    """The front's models layer by layer: colour = share of MLP units kept, the label its
    weight precision, a dropped layer crossed out; embedding and lm_head at the ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = [r for r in found if r["front"] and r.get("slice_plan") and r.get("precision_plan")]
    if not front:
        return None
    layers = len(front[0]["slice_plan"]["mlp_units"])
    full = max(max(r["slice_plan"]["mlp_units"]) for r in front)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.42 * (layers + 2)), 0.6 + 0.55 * len(front)))
    colours = plt.get_cmap("viridis")
    for row, r in enumerate(front):
        plan, bits = r["slice_plan"], r["precision_plan"]
        dropped = set(plan["drop_layers"])
        exported = iter(range(layers))
        cells = [("emb", 1.0, bits["embedding"])]
        for layer in range(layers):
            if layer in dropped:
                cells.append(("x", None, ""))
                continue
            new = str(next(exported))
            precision = (bits["layers"].get(new) or bits["default"])["mlp"]
            cells.append((str(layer), plan["mlp_units"][layer] / full, precision))
        cells.append(("head", 1.0, bits["lm_head"]))
        for column, (_, keep, precision) in enumerate(cells):
            if keep is None:
                axes.add_patch(plt.Rectangle((column, row), 1, 1, color="0.9"))
                axes.plot([column, column + 1], [row, row + 1], color="0.5", lw=0.8)
                continue
            axes.add_patch(plt.Rectangle((column, row), 1, 1, color=colours(keep)))
            axes.text(column + 0.5, row + 0.5, precision.replace("/", "\n"), ha="center",
                      va="center", fontsize=5.5, color="white" if keep < 0.6 else "black")
    axes.set_xlim(0, layers + 2)
    axes.set_ylim(0, len(front))
    axes.set_yticks([i + 0.5 for i in range(len(front))],
                    [f"trial {r['trial']}" for r in front], fontsize=7)
    axes.set_xticks([0.5, *[i + 1.5 for i in range(layers)], layers + 1.5],
                    ["emb", *[str(i) for i in range(layers)], "head"], fontsize=6)
    axes.set_title("front models by layer: colour = MLP units kept (yellow: all), text = "
                   "weights, crossed = dropped", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_llm_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    found = rows(study)
    plots = [p for metric in ("decode_tokens_per_s", "model_size_mb", "peak_memory_mb",
                              "energy_mj_per_token")
             if (p := _plot(found, metric, out_dir / f"perplexity_vs_{metric}.png"))]
    picture = _layers_picture(found, out_dir / "front_layers.png")
    data = {"study": study.study_name, "objectives": study.user_attrs.get("objectives"),
            "budgets": study.user_attrs.get("budgets"), "text": study.user_attrs.get("llm_data"),
            "trials": found}
    json_path = out_dir / "llm_report.json"
    json_path.write_text(json.dumps(data, indent=1, default=str))
    lines = [f"# {study.study_name}: language-model search", "",
             f"Budgets: {study.user_attrs.get('budgets') or 'none'}. Quality: next-token "
             f"accuracy of the exported folder on the val text (the search's selection); "
             f"test perplexity for the front only. Every figure is of the exported bytes.", "",
             "```", summary(study), "```", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if picture is not None:
        lines += ["", "## The front, layer by layer", "", f"![front layers]({picture.name})"]
    tested = study.user_attrs.get("llm_test") or {}
    generated = [(number, figures["generation"]) for number, figures in tested.items()
                 if figures.get("generation")]
    if generated:
        lines += ["", "## The same prompt, greedy, from each front model's folder", ""]
        lines += [f"- trial {number}: `{' '.join(text.split())}`" for number, text in generated]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    from hwnas.report.html import html_report

    html_path = out_dir / "report.html"
    html_path.write_text(html_report(md_path.read_text(), study.study_name, out_dir))
    paths = {"markdown": md_path, "html": html_path, "json": json_path}
    if plots:
        paths["plot"] = plots[0]
    if picture is not None:
        paths["layers"] = picture
    return paths
