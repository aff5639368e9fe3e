"""A study written the way hwnas writes it, read back through optuna-dashboard's own server
over HTTP: constraints per budget, feasibility, objective names, records and artifacts."""

import hashlib
import json
import threading
import urllib.request
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, make_server

import onnx
import optuna
import pytest
from onnx import TensorProto, helper

from hwnas.records import Artifact, StudyRecord, TrialOutcome, TrialStage
from hwnas.run import RUN_FILE, RunFolder

pytest.importorskip("optuna_dashboard")  # an extra: pip install 'hwnas[dashboard]'

from hwnas.report.dashboard import app  # noqa: E402  (needs optuna_dashboard)

BUDGETS = {"latency_p90_ms": 5.0, "model_size_mb": 1.0}
# budget -> relative excess per trial, as hwnas.budgets.constraint_values gives them
EXCESS = [{"latency_p90_ms": -0.25, "model_size_mb": -0.5},   # meets both budgets
          {"latency_p90_ms": 0.4, "model_size_mb": -0.5},     # too slow
          {"latency_p90_ms": -0.1, "model_size_mb": 0.0}]     # exactly at the size budget


def _onnx_file(path, width):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])])
    onnx.save(helper.make_model(graph), path)
    return Artifact.from_file(path, {"stage1": width}, 0)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def served(run):
    """optuna-dashboard's own WSGI app for ``run``, on a free port of 127.0.0.1: its URL."""
    server = make_server("127.0.0.1", 0, app(run), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def get_json(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def dashboard(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_FILE).write_text(json.dumps({
        "storage": f"sqlite:///{run_dir / 'study.db'}", "study_name": "tiny--local"}))
    run = RunFolder.load(run_dir)
    study = optuna.create_study(study_name=run.study_name, storage=run.storage_url,
                                directions=["maximize", "minimize"])
    StudyRecord(tuple(BUDGETS.items()), "base", 0.9, (1, 8), {"scale": 1.0},
                objectives=("accuracy", "latency_p90_ms")).write(study)
    kept = []
    for number, excess in enumerate(EXCESS):
        trial = study.ask()
        artifact = _onnx_file(tmp_path / f"m{number}.onnx", 4 + number)
        TrialOutcome(stage=TrialStage.EVALUATED, artifact=artifact,
                     accuracy_val=0.8 + number / 100, device="test-local").write(trial)
        kept.append(run.keep_artifact(artifact, trial))
        for name, value in excess.items():  # as hwnas.search.pipeline does
            trial.set_constraint(name, value)
        study.tell(trial, [0.8 + number / 100, 5.0 * (1 + excess["latency_p90_ms"])])

    with served(run) as base:
        yield run, study, kept, base


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_the_dashboard_shows_each_budget_and_which_trials_are_feasible(dashboard):
    run, study, kept, base = dashboard
    [listed] = get_json(f"{base}/api/studies")["study_summaries"]
    assert listed["study_name"] == "tiny--local"
    detail = get_json(f"{base}/api/studies/{listed['study_id']}?after=0")
    assert detail["objective_names"] == ["accuracy", "latency_p90_ms"]
    trials = sorted(detail["trials"], key=lambda t: t["number"])
    assert len(trials) == len(EXCESS)
    for trial, excess in zip(trials, EXCESS):
        # the list the dashboard's plots read (feasible: every value <= 0), in name order
        assert trial["constraints"] == [excess[name] for name in sorted(excess)]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert json.loads(attrs["constraints"]) == excess  # per budget, by name
        assert attrs["stage"] == "evaluated"
        assert json.loads(attrs["artifact"])["sha256"] == \
            TrialOutcome.from_trial(study.trials[trial["number"]]).artifact.sha256
    feasible = [all(v <= 0 for v in t["constraints"]) for t in trials]
    assert feasible == [True, False, True]
    # hwnas decides feasibility from the same study: the dashboard agrees with it
    assert feasible == [all(v <= 0 for _, v in TrialOutcome.from_trial(t).constraints)
                        for t in study.trials]


def test_the_dashboard_lists_and_serves_the_kept_onnx_bytes(dashboard):
    run, study, kept, base = dashboard
    detail = get_json(f"{base}/api/studies/{study._study_id}?after=0")
    for trial, artifact_id in zip(sorted(detail["trials"], key=lambda t: t["number"]), kept):
        [listed] = trial["artifacts"]
        sha256 = TrialOutcome.from_trial(study.trials[trial["number"]]).artifact.sha256
        assert listed["artifact_id"] == artifact_id and listed["filename"] == f"{sha256}.onnx"
        body = _get(f"{base}/artifacts/{study._study_id}/{trial['trial_id']}/{artifact_id}")
        assert hashlib.sha256(body).hexdigest() == sha256


def test_the_study_itself_is_unchanged_by_the_view(dashboard):
    """Nothing is written for the dashboard: Optuna and hwnas still read each constraint once,
    by name, and no trial carries the old list form or a 'constraints' user attribute."""
    run, study, kept, base = dashboard
    _get(f"{base}/api/studies/{study._study_id}?after=0")
    reread = run.open_study()
    for trial, excess in zip(reread.trials, EXCESS):
        assert trial.constraints == excess
        assert "constraints" not in trial.system_attrs and "constraints" not in trial.user_attrs
