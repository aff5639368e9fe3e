"""The Candidate: one compression of the base model, as each knob's value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Hashable, Mapping

from hwnas.knobs.base import Knob, knob, pairs, registered


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One compression of the base model: what the search proposes for a trial. Each
    registered knob that takes part holds a value (hwnas/knobs); the JSON is the knobs' parts
    side by side, in the keys every earlier hwnas wrote (keep_ratios, precision_plan...)."""

    values: tuple[tuple[str, Hashable], ...]  # knob name -> its value

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "Candidate":
        """From knob name -> value (each in any form its knob normalises, e.g. a dict)."""
        return cls(pairs({name: knob(name).normalize(value) for name, value in values.items()
                          if value is not None}))

    @classmethod
    def build(cls, keep_ratios: Mapping[str, float], pruning_criterion: str,
              global_pruning_ratio: float, precision_plan: Mapping[str, str],
              calibration_method: str = "minmax",
              head_keep_ratios: Mapping[str, float] | None = None,
              mlp_keep_ratios: Mapping[str, float] | None = None) -> "Candidate":
        """The built-in knobs' values by name (benchmarks and tests write candidates so)."""
        return cls.of({"width": keep_ratios, "pruning": (pruning_criterion, global_pruning_ratio),
                       "precision": precision_plan, "calibration": calibration_method,
                       "heads": head_keep_ratios or {}, "mlp": mlp_keep_ratios or {}})

    def value(self, name: str, default: Any = None) -> Any:
        return dict(self.values).get(name, default)

    def replace(self, **values: Any) -> "Candidate":
        """The same candidate with some knobs' values replaced (None: removed)."""
        return Candidate.of({**dict(self.values), **values})

    def structure(self) -> tuple[tuple[str, Hashable], ...]:
        """The values of the knobs that prune (a knob that overrides Knob.prune): what the
        pruned network is. Candidates that differ only in how they are exported (precision,
        calibration) share it, and so share their pruned model's shape and compute."""
        return tuple((name, value) for name, value in self.values
                     if type(knob(name)).prune is not Knob.prune)

    # the built-in knobs' values, read by name where the pipeline needs them
    @property
    def keep_ratios(self) -> tuple[tuple[str, float], ...]:  # stage -> fraction of channels kept
        return self.value("width", ())

    @property
    def pruning_criterion(self) -> str:  # what ranks channels for every structural knob
        return self.value("pruning", ("l1", 0.0))[0]

    @property
    def global_pruning_ratio(self) -> float:  # removed globally after width, by importance
        return self.value("pruning", ("l1", 0.0))[1]

    @property
    def precision_plan(self) -> tuple[tuple[str, str], ...]:  # precision unit -> precision
        return self.value("precision", ())

    @property
    def calibration_method(self) -> str:  # int8/a16w8 activation ranges
        return self.value("calibration", "minmax")

    @property
    def head_keep_ratios(self) -> tuple[tuple[str, float], ...]:
        return self.value("heads", ())

    @property
    def mlp_keep_ratios(self) -> tuple[tuple[str, float], ...]:
        return self.value("mlp", ())

    def finetune_seed(self, base: int) -> int:
        """The fine-tuning seed of this compression: ``base`` (the search's seed) plus a number
        drawn from the candidate itself, so the same compression is fine-tuned the same way by
        any trial, resumed trial, worker, finalize or benchmark (a side-by-side comparison of
        two policies that pick the same model then ties instead of differing by fine-tuning
        noise), and different compressions draw different seeds."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return base + int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.values)
        data: dict[str, Any] = {}
        for each in registered():
            if each.name in values:
                data.update(each.record(values[each.name]))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        """From to_dict's JSON as any hwnas stored it; keys of knobs this process has not
        registered are left out. A record of a language model's knobs is of that family alone
        (the image knobs read defaults from records written before they existed)."""
        language = {each.name: each.read(data) for each in registered("causal_lm")}
        if any(value is not None for value in language.values()):
            return cls.of(language)
        return cls.of({each.name: each.read(data) for each in registered("vision")})

    def summary(self) -> str:
        values = dict(self.values)
        parts = (each.summary(values[each.name], values) for each in registered()
                 if each.name in values)
        return " ".join(part for part in parts if part) or "base model (unchanged)"
