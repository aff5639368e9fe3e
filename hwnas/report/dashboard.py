"""A run folder in optuna-dashboard, constraints included (`hwnas dashboard RUN`).

Optuna 5 keeps a trial's constraints one per name (system attrs ``constraints:<name>``, what
``trial.set_constraint`` writes and ``trial.constraints`` reads). optuna-dashboard (0.21)
reads only the list Optuna 4's ``constraints_func`` wrote (system attr ``constraints``), so a
plain ``optuna-dashboard sqlite:///runs/NAME/study.db`` shows every trial as feasible.

Writing that list into the study too is not an option: Optuna 5 reads both forms, so every
trial would carry each constraint twice (``'0'``, ``'1'``, ... beside the names), for the
samplers and for hwnas alike. So nothing is written: the dashboard is given a read-only view
of the storage whose trials carry the list form (in name order, for its feasible/infeasible
marks) and, as the user attribute ``constraints``, the per-name values (its trial page lists
user attributes; it lists constraints nowhere else). The study itself is unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from hwnas.errors import ConfigError
from hwnas.run import RunFolder
from hwnas.storage import make_storage

CONSTRAINTS_PREFIX = "constraints:"  # Optuna 5: one system attr per constraint name
LEGACY_CONSTRAINTS = "constraints"  # Optuna 4's list, the form optuna-dashboard reads
SHOWN_AS = "constraints"  # the user attribute the dashboard's trial page shows, name -> value


def _dashboard() -> Any:
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed: pip install 'hwnas[dashboard]' "
                          "(or pip install optuna-dashboard)") from None
    return optuna_dashboard


def as_dashboard_reads(trial: FrozenTrial) -> FrozenTrial:
    """A copy of ``trial`` with its named constraints in the form optuna-dashboard reads."""
    named = dict(sorted(trial.constraints.items()))
    if not named:
        return trial
    shown = copy.copy(trial)  # shallow: the attrs dicts are replaced, never changed in place
    shown.system_attrs = {**{k: v for k, v in trial.system_attrs.items()
                             if not k.startswith(CONSTRAINTS_PREFIX)},
                          LEGACY_CONSTRAINTS: list(named.values())}
    shown.user_attrs = {**trial.user_attrs, SHOWN_AS: named}
    return shown


def _forward(name: str) -> Any:
    def call(self: "DashboardView", *args: Any, **kwargs: Any) -> Any:
        return getattr(self.storage, name)(*args, **kwargs)
    call.__name__ = name
    return call


class DashboardView(BaseStorage):
    """The run's storage as optuna-dashboard should read it: trials through
    ``as_dashboard_reads``, everything else (notes the dashboard writes included) unchanged."""

    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return as_dashboard_reads(self.storage.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Any = None) -> list[FrozenTrial]:
        return [as_dashboard_reads(t)
                for t in self.storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)]


for _name in BaseStorage.__abstractmethods__ - {"get_trial", "get_all_trials"}:
    setattr(DashboardView, _name, _forward(_name))
DashboardView.__abstractmethods__ = frozenset()


def open_view(run: RunFolder) -> DashboardView:
    import optuna

    return DashboardView(optuna.storages.get_storage(make_storage(run.storage_url)))


def app(run: RunFolder) -> Any:
    """The dashboard's WSGI application for a run folder: its study and its artifact store."""
    return _dashboard().wsgi(open_view(run), artifact_store=run.store())


def serve(run: RunFolder, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the run in optuna-dashboard until interrupted (127.0.0.1: this machine only)."""
    _dashboard().run_server(open_view(run), host=host, port=port, artifact_store=run.store())
