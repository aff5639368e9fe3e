"""Where the time goes, in a search: the base model's and the best feasible model's time per
module on the search's device (a layer profile of their bytes, taken after the timed runs so
the figures the search used stay as they were), kept in the study for the report.

The base model is profiled with its one measurement at the start; the best feasible model
once at the end of each search run (again only when the best changed): one more measurement
per run, on a device of the pool the trial ran on. Per-node times come from the device's
runtime (onnxruntime's profiler); a simulator's (Qualcomm's HTP on x86) are marked so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import optuna

from hwnas.errors import HwnasError
from hwnas.layers import UNIT_TIMES_ATTR as ATTR
from hwnas.layers import UnitTime, file_unit_times

if TYPE_CHECKING:
    from hwnas.records import Measurement
    from hwnas.search.candidates import TrialContext

def entry(label: str, measurement: "Measurement", units: Sequence[UnitTime]) -> dict[str, Any]:
    layers = dict(measurement.layers or {})
    layers.pop("nodes", None)  # the units hold what the report shows
    emulated = " (emulation: not the device's time)" if measurement.emulated else ""
    return {"label": label + emulated, "device": measurement.device, "layers": layers,
            "units": [u.to_dict() for u in units], "model_sha256": measurement.model_sha256}


def record(study: optuna.Study, role: str, found: Mapping[str, Any]) -> None:
    kept = dict(study.user_attrs.get(ATTR) or {})
    kept[role] = dict(found)
    study.set_user_attr(ATTR, kept)


def profile_best(study: optuna.Study, ctx: "TrialContext", log: Callable[[str], None]) -> None:
    """The best feasible trial's bytes profiled per module (where it changed since the last
    run); a failure says so in one line and leaves the search's results as they are."""
    from hwnas.pareto import best_feasible, study_directions
    from hwnas.run import outcomes
    from hwnas.search.candidates import Timings
    from hwnas.search.measuring import DeviceLease, TrialMeasurer

    best = best_feasible(outcomes(study), study_directions(study))
    if best is None or best.artifact is None:
        return
    kept = (study.user_attrs.get(ATTR) or {}).get("best") or {}
    if kept.get("model_sha256") == best.artifact.sha256:
        return
    try:
        artifact = ctx.run.kept_artifact(best, study)
        lease = DeviceLease(ctx.devices, best.device_pool)
        try:
            measurement = TrialMeasurer(lease, Timings()).measure(artifact, layers=True)
        finally:
            lease.release()
        units = file_unit_times(measurement.layers, artifact.path)
    except HwnasError as exc:
        log(f"the best model's time per module was not profiled: {exc}")
        return
    record(study, "best", entry(f"best feasible (trial {best.number})", measurement, units))
    if units:
        top = units[0]
        emulated = " of the simulator" if measurement.emulated else ""
        log(f"best feasible trial {best.number}: most time{emulated} in {top.unit} "
            f"({top.share:.0%})")
