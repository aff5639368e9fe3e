"""The agent stays light: stdlib + numpy + onnxruntime, no torch, no hwnas, Python 3.8."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

AGENT = REPO / "agents" / "hwnas_agent"
ALLOWED_THIRD_PARTY = {"numpy", "onnxruntime", "hwnas_agent"}
# optional runtimes and sensors: imported inside the function that needs them, never at load
LAZY_OPTIONAL = {"tensorrt", "pynvml", "onnxruntime_genai"}
PY38 = REPO / ".venv-py38" / "bin" / "python"


def imported_top_level(path: Path, module_level_only: bool = False) -> set[str]:
    names = set()
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_agent_imports_only_stdlib_numpy_and_onnxruntime():
    offenders = {}
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY
    for path in AGENT.rglob("*.py"):
        bad = (imported_top_level(path) - allowed - LAZY_OPTIONAL) | (
            imported_top_level(path, module_level_only=True) - allowed)
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_importing_every_agent_module_loads_neither_torch_nor_hwnas():
    modules = sorted("hwnas_agent." + ".".join(p.relative_to(AGENT).with_suffix("").parts)
                     for p in AGENT.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'hwnas', 'torchvision')]\n"
            "print(len(sys.modules)); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "hwnas_agent.server" in modules and "hwnas_agent.runtimes.onnxruntime" in modules


def test_agent_distribution_depends_on_numpy_and_onnxruntime_only():
    project = tomllib.loads((REPO / "agents" / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert names == {"numpy", "onnxruntime"}
    assert project["requires-python"] == ">=3.8"
    assert project["scripts"]["hwnas-agent"] == "hwnas_agent.cli:main"


@pytest.mark.skipif(not PY38.exists(), reason="no Python 3.8 on this machine (scripts/setup.sh "
                                               "makes .venv-py38 where one exists)")
def test_agent_serves_and_measures_on_python38_without_torch(tmp_path):
    from hwnas_agent.protocol import MeasureRequest

    from hwnas.records import Artifact
    from hwnas.remote.local import LocalAgentProcess
    from hwnas.testing.models import matmul_onnx

    version = subprocess.run([str(PY38), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "(3, 8)"
    no_torch = subprocess.run([str(PY38), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0  # the agent's environment never had torch
    process = LocalAgentProcess(tmp_path / "state38", python=str(PY38))
    process.start()
    client = process.client("py38")
    try:
        assert client.hello()["python"].startswith("3.8")
        # IR 8: .venv-py38 has the oldest onnxruntime the agent allows (1.14), which reads no newer
        artifact = Artifact.from_file(matmul_onnx(tmp_path / "dense.onnx", 0.05), {}, 0)
        client.ensure_model(artifact)
        measurement = client.measure(MeasureRequest(model_sha256=artifact.sha256, min_seconds=0.1,
                                                    min_iterations=20, warmup_seconds=0.0))
        assert measurement.iterations >= 20 and measurement.latency_ms_p50 > 0
    finally:
        process.stop()


@pytest.mark.skipif(not PY38.exists(), reason="no Python 3.8 on this machine")
def test_every_agent_module_imports_on_python38():
    modules = sorted("hwnas_agent." + ".".join(p.relative_to(AGENT).with_suffix("").parts)
                     for p in AGENT.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    code = f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')"
    done = subprocess.run([str(PY38), "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
