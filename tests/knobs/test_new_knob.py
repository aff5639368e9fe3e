"""A knob hwnas does not ship, defined and registered here only: the search suggests its
parameter, it reaches the Candidate record and the saved channel plan, and it changes the
model as it says (issue 21.3: a new knob touches no other file)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution

from hwnas.config.fields import Fraction, Frozen
from hwnas.errors import ConfigError
from hwnas.knobs import Candidate, Knob, ModelParts, registered, unregister
from tests.conftest import DIGITS_SPACE, FAST_DEVICE

LAYER = "stage2.3"  # small_cnn's second convolution of stage 2: 64 channels


class LayerWidthSettings(Frozen):
    layers: list[str]
    keep_ratios: list[Fraction] = [0.25, 0.5, 1.0]


def define_layer_width() -> type[Knob]:
    """Per-layer width: each named convolution keeps a fraction of its output channels (the
    built-in width knob keeps one fraction per stage)."""

    class LayerWidth(Knob):
        name = "layer_width"
        config = LayerWidthSettings
        enabled_by_default = False
        order = 70
        apply_order = 50

        def units(self, settings: Any, model: ModelParts) -> dict[str, list[Any]]:
            from hwnas.compress.prune import named_modules

            if settings is None:
                return {}
            return {layer: named_modules(model.model, [layer], "knobs.layer_width.layers")
                    for layer in settings.layers}

        def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                          ) -> dict[str, BaseDistribution]:
            return {f"layer_keep_{u}": CategoricalDistribution(settings.keep_ratios) for u in units}

        def suggest(self, pick, settings, units, chosen) -> Hashable | None:
            if settings is None:
                return None
            return self.normalize({u: pick(f"layer_keep_{u}", 1.0) for u in units})

        def neutral(self, units: Sequence[str]) -> Hashable:
            return ()

        def least_destructive(self, params: Mapping[str, BaseDistribution]) -> dict[str, Any]:
            return {name: max(d.choices) for name, d in params.items()}  # type: ignore[attr-defined]

        def normalize(self, value: Any) -> Hashable:
            return tuple(sorted((u, float(k)) for u, k in dict(value).items()))

        def record(self, value: Any) -> dict[str, Any]:
            return {"layer_keep_ratios": dict(value)}

        def read(self, data: Mapping[str, Any]) -> Hashable | None:
            return self.normalize(data["layer_keep_ratios"]) if "layer_keep_ratios" in data \
                else None

        def summary(self, value: Any, values: Mapping[str, Any]) -> str:
            return "layers[" + " ".join(f"{u}={k:g}" for u, k in value) + "]"

        def changes_structure(self, value: Any) -> bool:
            return any(k < 1.0 for _, k in value)

        def most_aggressive(self, settings: Any, units: Sequence[str]) -> Hashable:
            return self.normalize({u: min(settings.keep_ratios) for u in units}) \
                if settings else ()

        def alone(self, value: Any) -> list[tuple[str, Hashable]]:
            return [(f"knobs.layer_width on {u!r}", self.normalize({u: k})) for u, k in value]

        def prune(self, work: Any, value: Any) -> None:
            """The lowest-ranked output channels of each layer go, on the shared dependency
            graph, so the channel plan records them."""
            import torch
            import torch_pruning as tp

            units, round_to = work.setup.units_of(self.name), work.setup.round_to
            for unit, keep in value:
                for conv in work.own(units.get(unit, [])):
                    channels = conv.out_channels
                    kept = max(round_to, math.floor(channels * keep / round_to + 0.5) * round_to)
                    if kept >= channels:
                        continue
                    graph = work.graph()
                    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels,
                                                    list(range(channels)))
                    dropped = torch.topk(work.importance(group), channels - kept,
                                         largest=False).indices.tolist()
                    graph.get_pruning_group(conv, tp.prune_conv_out_channels,
                                            sorted(dropped)).prune()

    return LayerWidth


@pytest.fixture(scope="module")
def layer_width():
    knob = define_layer_width()  # subclassing Knob with a name registers it
    try:
        yield knob
    finally:
        unregister(knob.name)


SPACE = textwrap.dedent(DIGITS_SPACE).replace(
    "  width: {keep_ratios: [0.25, 0.5, 1.0]}\n  pruning: {criteria: [l1, saliency], "
    "global_ratios: [0.0, 0.2]}\n",
    f"  width: null\n  pruning: null\n  layer_width: {{layers: ['{LAYER}'], "
    f"keep_ratios: [0.25, 0.5]}}\n").replace(
    "budgets: {latency_p90_ms: 2.0, model_size_mb: 0.1}", "budgets: {model_size_mb: 1.0}")


def expected_channels(keep: float) -> int:
    return max(8, math.floor(64 * keep / 8 + 0.5) * 8)


@pytest.mark.parametrize("sampler", ["tpe", "engine"])
def test_a_knob_defined_in_a_test_is_searched_recorded_and_applied(layer_width, tmp_path, sampler):
    from hwnas.models.saved import load_pruned, read_plan
    from hwnas.records import TrialStage
    from hwnas.run import outcomes
    from hwnas.search import run_search

    assert "layer_width" in [k.name for k in registered()]
    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    trials = 3 if sampler == "tpe" else 4
    space.write_text(SPACE + f"search: {{n_trials: {trials}, seed: 2, sampler: {sampler}}}\n")
    device.write_text(FAST_DEVICE)
    outcome = run_search(space, device, tmp_path / "run", progress=False, log=lambda _: None)
    found = outcomes(outcome.study)
    evaluated = [o for o in found if o.stage == TrialStage.EVALUATED]
    assert evaluated, [(o.stage, o.failure, o.rejection) for o in found]
    trials_by_number = outcome.study.get_trials()
    for result in evaluated:
        trial = trials_by_number[result.number]
        keep = trial.params[f"layer_keep_{LAYER}"]  # the search suggested it
        assert keep in (0.25, 0.5) and f"keep_{LAYER.split('.')[0]}" not in trial.params
        # its part of the Candidate record, read back as it was written
        stored = trial.user_attrs["candidate"]
        assert stored["layer_keep_ratios"] == {LAYER: keep}
        assert Candidate.from_dict(stored) == result.candidate
        assert result.candidate.value("layer_width") == ((LAYER, keep),)
        assert f"layers[{LAYER}={keep:g}]" in result.candidate.summary()
        # it changed what it claims: that layer's channels in the deployed bytes, nothing else
        channels = dict(result.artifact.channels)
        assert channels[LAYER] == expected_channels(keep) < 64
        assert channels["stage2.0"] == 64 and channels["stage1.0"] == 32
        # and the saved channel plan rebuilds it
        kept = outcome.run.kept_pytorch(result, outcome.study)
        assert kept is not None
        state, plan = kept
        assert read_plan(plan)["steps"]
        rebuilt = load_pruned(plan, state)
        assert rebuilt.stage2[3].out_channels == expected_channels(keep)
        assert rebuilt.stage2[0].out_channels == 64


def test_its_yaml_section_is_checked_like_any_other(layer_width, tmp_path):
    from hwnas.config import load_search_space

    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("keep_ratios: [0.25, 0.5]}", "keep_ratio: [0.25]}"))
    with pytest.raises(ConfigError, match=r"key 'knobs.layer_width.keep_ratio': unknown key; "
                                          r"allowed keys here: keep_ratios, layers") as raised:
        load_search_space(path)
    assert str(path) in str(raised.value)
    path.write_text(SPACE.replace("knobs:\n", "knobs:\n  depth: {}\n"))
    with pytest.raises(ConfigError, match=r"key 'knobs.depth': unknown key; allowed keys here: "
                                          r"heads, layer_width, llm_bits, llm_heads, llm_layers, llm_mlp, mlp, "
                                          r"precision, pruning, width"):
        load_search_space(path)
    # off unless written: a space without the section is the space it was
    assert load_search_space(_write(tmp_path, DIGITS_SPACE)).knobs.layer_width is None


def test_taken_away_again_the_section_is_unknown(tmp_path):
    from hwnas.config import load_search_space

    knob = define_layer_width()
    unregister(knob.name)
    assert "layer_width" not in [k.name for k in registered()]
    with pytest.raises(ConfigError, match=r"key 'knobs.layer_width': unknown key"):
        load_search_space(_write(tmp_path, SPACE))


def _write(folder, text):
    path = folder / "plain.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _plugin_package(folder, entry: str, module_text: str) -> None:
    """An installed package as pip leaves one: a module and its dist-info, whose
    entry_points.txt names ``entry`` in the group hwnas.knobs."""
    (folder / "myknobs.py").write_text(textwrap.dedent(module_text))
    info = folder / "myknobs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myknobs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[hwnas.knobs]\n{entry}\n")


PLUGIN = """\
    from tests.knobs.test_new_knob import define_layer_width

    LayerWidth = define_layer_width()
    """


def test_an_installed_package_adds_a_knob_that_the_command_line_searches(tmp_path):
    """The entry point group hwnas.knobs: `hwnas search` (a fresh process, which imports
    nothing of the user's) sees the package's knob, reads its section, suggests and applies
    it; without the package the same space is refused by the knob's key."""
    import json
    import os
    import sqlite3
    import subprocess

    from tests.conftest import REPO

    packages = tmp_path / "site"
    packages.mkdir()
    _plugin_package(packages, "layer_width = myknobs:LayerWidth", PLUGIN)
    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(SPACE + "search: {n_trials: 1, seed: 2, sampler: tpe}\n")
    device.write_text(FAST_DEVICE)
    hwnas = REPO / ".venv" / "bin" / "hwnas"

    def run(*argv: str, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*path, REPO]))}
        return subprocess.run([str(hwnas), *argv], capture_output=True, text=True, env=env,
                              timeout=600)

    def search(*path: Path) -> subprocess.CompletedProcess:
        return run("search", str(space), "--device", str(device), "--run-dir",
                   str(tmp_path / "run"), "--no-progress", path=path)

    refused = search()
    assert refused.returncode == 2, refused.stderr
    assert "knobs.layer_width" in refused.stderr and "unknown key" in refused.stderr
    assert "needs that package installed: entry point group hwnas.knobs" in refused.stderr
    done = search(packages)
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(tmp_path / "run" / "study.db") as db:
        names = {row[0] for row in db.execute("SELECT param_name FROM trial_params")}
        records = [json.loads(row[0]) for row in db.execute(
            "SELECT value_json FROM trial_user_attributes WHERE key = 'candidate'")]
    assert f"layer_keep_{LAYER}" in names and not any(n.startswith("keep_stage") for n in names)
    assert records and all(LAYER in r["layer_keep_ratios"] for r in records)
    # a command that only reads the study sees the knob in the records too
    report = run("report", str(tmp_path / "run"), path=(packages,))
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"layers[{LAYER}=" in report.stdout
    # without the package, a command that reads the records is refused: read without the
    # knob's part, they would describe another model (a card, a report)
    for verb in (["report", str(tmp_path / "run")],
                 ["export", str(tmp_path / "run"), "--trial", "0", "--out", str(tmp_path / "x")]):
        unread = run(*verb)
        assert unread.returncode == 2, (verb, unread.stdout[-2000:], unread.stderr[-2000:])
        assert "uses the knob(s) layer_width, which no installed package provides" \
            in unread.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("module_text, entry, error", [
    ("raise RuntimeError('no licence')\n", "broken = myknobs:Knob",
     r"knob plug-in broken \(myknobs:Knob\) cannot be loaded: RuntimeError: no licence"),
    ("VALUE = 3\n", "three = myknobs:VALUE",
     r"knob plug-in three \(myknobs:VALUE\) is not an hwnas.knobs.Knob subclass"),
    ("from hwnas.knobs import Knob\n\nclass Base(Knob):\n    pass\n", "base = myknobs:Base",
     r"knob plug-in base \(myknobs:Base\): the class Base has no name"),
    ("VALUE = 3\n", "module = myknobs",
     r"knob plug-in module \(myknobs\): the module myknobs defines no knob"),
])
def test_a_knob_plug_in_that_fails_is_one_error_naming_it(tmp_path, monkeypatch, module_text,
                                                          entry, error):
    import sys

    from hwnas.knobs import base

    _plugin_package(tmp_path, entry, module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_plugins_loaded", False)
    try:
        for _again in range(2):  # said again until mended, not skipped after the first time
            with pytest.raises(ConfigError, match=error):
                registered()
    finally:
        sys.modules.pop("myknobs", None)
