"""Issue 21.6 for the agent: no module over 400 lines (split by meaning: connections.py,
workers.py, intake.py, onnx_wire.py, runtimes/ort_*.py came out of larger ones)."""

from __future__ import annotations

from tests.conftest import REPO

MAX_LINES = 400


def test_no_agent_module_is_over_400_lines():
    package = REPO / "agents" / "hwnas_agent"
    over = {p.relative_to(package).as_posix(): n for p in sorted(package.rglob("*.py"))
            for n in [len(p.read_text().splitlines())] if n > MAX_LINES}
    assert over == {}, f"agent modules over {MAX_LINES} lines: {over}"
