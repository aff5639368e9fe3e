"""`hwnas status`: a study's progress across controllers and workers."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import optuna

from hwnas.errors import ConfigError
from hwnas.records import StudyRecord, TrialStage
from hwnas.redaction import redact
from hwnas.report.tables import fmt
from hwnas.run import RunFolder, outcomes
from hwnas.pareto import best_feasible, study_directions
from hwnas.storage import make_storage

FINALIZED = "finalized"  # a stage count of its own in the status: not a search trial


def _locate(target: str, study_name: str | None) -> tuple[str, str]:
    if Path(target).is_dir():
        run = RunFolder.load(target)
        return run.storage_url, study_name or run.study_name
    storage = make_storage(target)
    if study_name is not None:
        return target, study_name
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if len(names) != 1:
        raise ConfigError(f"{redact(target)}: holds {len(names)} studies ({', '.join(names) or 'none'}); "
                          f"name one with --study")
    return target, names[0]


def study_status(target: str, study_name: str | None = None) -> dict[str, Any]:
    from hwnas.search.controllers import is_gone

    storage_url, name = _locate(target, study_name)
    storage = make_storage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"{redact(storage_url)}: no study named {name!r}") from None
    record = StudyRecord.from_study(study)
    found = outcomes(study)
    stale_ids = set(getattr(study._storage, "_get_stale_trial_ids", lambda _: [])(study._study_id))
    trials = study.get_trials(deepcopy=False)
    workers: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: {"stages": collections.Counter(), "devices": set(), "torch_devices": set(),
                 "stale": False})
    for trial, outcome in zip(trials, found):
        who = outcome.controller.rsplit(":", 1)[0] if outcome.controller else "unknown"
        entry = workers[who]
        entry["stages"][outcome.stage.value] += 1
        if outcome.device:
            entry["devices"].add(outcome.device)
        if outcome.finetune and outcome.finetune.device:
            entry["torch_devices"].add(outcome.finetune.device)
        if outcome.stage == TrialStage.RUNNING and (trial._trial_id in stale_ids
                                                    or is_gone(outcome.controller)):
            entry["stale"] = True
    best = best_feasible(found, study_directions(study))
    # finalized trials (`hwnas finalize`) are not search trials: not among the trials wanted
    stages = collections.Counter(FINALIZED if o.finalized_from is not None else o.stage.value
                                 for o in found)
    return {
        "study": name, "storage": redact(storage_url), "trials_wanted": record.n_trials,
        "trials": len(found), "stages": dict(stages), "torch_device": record.torch_device,
        "best_feasible": None if best is None else {
            "trial": best.number, "accuracy_val": best.accuracy_val,
            "accuracy_test": best.accuracy_test, "device": best.device,
            "latency_p90_ms": best.measurement.latency_ms_p90 if best.measurement else None,
            # a language model's (generation): its decode speed in place of one latency
            "decode_tokens_per_s": best.measurement.decode_tokens_per_s
            if best.measurement else None},
        "workers": {who: {"stages": dict(w["stages"]), "devices": sorted(w["devices"]),
                          "torch_devices": sorted(w["torch_devices"]), "stale": w["stale"]}
                    for who, w in sorted(workers.items())},
    }


def status_text(status: dict[str, Any]) -> str:
    stages = status["stages"]
    wanted = status["trials_wanted"]
    lines = [f"study {status['study']} ({status['storage']})",
             f"  trials: {stages.get('evaluated', 0) + stages.get('rejected_before_finetune', 0)}"
             f" done of {wanted if wanted is not None else '?'} wanted; "
             + ", ".join(f"{k} {v}" for k, v in sorted(stages.items()))]
    best = status["best_feasible"]
    if best is not None:
        speed = (f"decode {fmt(best.get('decode_tokens_per_s'), '.1f')} tokens/s"
                 if best.get("decode_tokens_per_s") is not None
                 else f"p90 {fmt(best['latency_p90_ms'], '.3f')} ms")
        lines.append(f"  best feasible so far: trial {best['trial']}, validation accuracy "
                     f"{fmt(best['accuracy_val'], '.4f')}, test accuracy "
                     f"{fmt(best['accuracy_test'], '.4f')}, {speed} on {best['device']}")
    else:
        lines.append("  best feasible so far: none")
    lines.append("  workers (host:pid):")
    for who, worker in status["workers"].items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(worker["stages"].items()))
        stale = "  STALE: running trials but the worker is gone or silent" if worker["stale"] else ""
        torch_devices = ", ".join(worker.get("torch_devices") or []) or "-"
        lines.append(f"    {who}: {counts}; devices {', '.join(worker['devices']) or '-'}; "
                     f"PyTorch on {torch_devices}{stale}")
    return "\n".join(lines)
