"""Hardening figures: hostile requests, slow connections, and kill -9 at random points.

    .venv/bin/python benchmarks/hardening.py fuzz                 # >= 2,000 hostile requests
    .venv/bin/python benchmarks/hardening.py kills agent --runs 20
    .venv/bin/python benchmarks/hardening.py kills worker --runs 20
    .venv/bin/python benchmarks/hardening.py kills controller --runs 20
    .venv/bin/python benchmarks/hardening.py flood                # 70 long-polls + 2 workers
    .venv/bin/python benchmarks/hardening.py badinputs           # one line and exit 2 each?

Each part prints a table and is saved under its own key in results/hardening.json.
Only 127.0.0.1 is ever contacted, and every part is bounded in count and time.

- fuzz: the real agent, started under a 1,024 open-file limit, gets 1,000 slow-loris
  connections (headers a byte at a time, reopened when the agent drops them) and at least
  2,000 hostile requests (random bytes, truncated requests, header bombs, missing and wrong
  tokens, path tricks, hostile JSON with and without the token, lying Content-Lengths, bad
  uploads), while a controller with the token says hello and measures a model throughout.
  Counted: answers by status class, 5xx, the controller's failures and hello latency, and
  the agent's peak open files, threads and memory.
- kills agent / worker: a persistent agent state folder gets jobs, each with a meter program
  under its worker (and, for the agent, an upload in progress); at a random moment of the
  agent's work (or of a measure worker's life) the agent (or that worker) gets SIGKILL; the agent is restarted (or keeps going). Counted per run: finished results lost,
  measurements that overlapped (two measure workers alive at once, sampled every 5 ms, or
  overlapping worker time spans), processes orphaned (alive 3 s after their parent died),
  upload files left behind, jobs never finished.
- kills controller: a short real search (the test suite's digits search, local agent) is
  killed at a random moment and run again to completion. Counted per run: trials completed
  before the kill and not complete after the rerun (lost), the same model bytes measured by
  more than one agent job in the study (measured twice; a measurement a retried trial reuses
  counts once), the model bytes the killed run's agent had finished measuring and the rerun
  measured again (remeasured after kill: device time spent twice, the study's records
  aside), trials left RUNNING after the rerun, and agent or worker processes alive 3 s after
  the kill (orphaned).
- flood: the real agent (worker memory limit 500 MB) measures a 150 MB model while another
  150 MB model is uploaded (its load check is a second worker) and one token holder keeps 70
  long-polls (wait=60) on the running job, each asked again as soon as it is answered, up to
  a bound in count and time; a third client says hello and asks for facts every 0.1 s.
  Counted: long-polls sent and their answers (held to the job's end, or cut short at once),
  5xx, the agent's open connections (sampled), hello and facts latency and failures, and the
  memory of all workers together (VmRSS summed every 5 ms) against the limit.
- badinputs: a bounded list of bad inputs (malformed and hostile YAML, out-of-range values,
  missing files and data, a damaged study.db, a second writer of a run folder, a device whose
  sshd serves no SFTP, a full disk, ...), each a real `hwnas` (or benchmark) subprocess under
  a memory limit: counted, those that end in exactly one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent

from _common import RESULTS, machine, median, table  # noqa: E402

from hwnas_agent.protocol import MeasureRequest  # noqa: E402

from hwnas.records import Artifact  # noqa: E402
from hwnas.remote.local import LocalAgentProcess  # noqa: E402

HWNAS = str(Path(sys.executable).parent / "hwnas")


# -- processes, seen through /proc -------------------------------------------------------------


def cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text and state not in ("Z", "X"):
                found[int(entry.name)] = text
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def measure_workers(marker: bytes) -> list[int]:
    """Live measure workers whose command line holds ``marker`` (a state folder). A worker's
    own child shows the worker's command line between fork and exec: not a second worker."""
    found = [pid for pid, text in cmdlines().items()
             if b"hwnas_agent.worker\0measure\0" in text and marker in text]
    return [pid for pid in found if parent(pid) not in found]


class OverlapMonitor:
    """Samples, every 5 ms, how many measure workers of one agent are alive at once."""

    def __init__(self, marker: bytes) -> None:
        self.marker, self.max_seen, self.overlaps = marker, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = len(measure_workers(self.marker))
            self.max_seen = max(self.max_seen, count)
            self.overlaps += count > 1
            time.sleep(0.005)

    def __enter__(self) -> "OverlapMonitor":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                values[key] = int(rest.split()[0])
        values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return values


def small_model(folder: Path) -> Artifact:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "small",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "small.onnx"
    onnx.save(model, str(path))
    return Artifact.from_file(path, {}, 0)


def metered(sha: str, seconds: float) -> MeasureRequest:
    return MeasureRequest(model_sha256=sha, warmup_seconds=0.0, warmup_iterations=2,
                          min_iterations=5, min_seconds=seconds, rounds=1, timeout_s=120.0,
                          power_source="meter", power_min_samples=2, idle_seconds=0.1)


def quick(sha: str, seconds: float = 0.05) -> MeasureRequest:
    return MeasureRequest(model_sha256=sha, warmup_seconds=0.0, warmup_iterations=2,
                          min_iterations=5, min_seconds=seconds, rounds=1, timeout_s=120.0)


# -- fuzz --------------------------------------------------------------------------------------


def hostile_request(rng: random.Random, token: str, sha: str) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n".encode()
    wrong = f"Authorization: Bearer {'0' * 64}\r\n".encode()

    def http(method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"",
             length: int | None = None) -> bytes:
        size = len(body) if length is None else length
        return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers
                + b"Content-Length: " + str(size).encode() + b"\r\n\r\n" + body)

    def job(fields: dict[str, Any]) -> bytes:
        return json.dumps(dict({"model_sha256": sha}, **fields)).encode()

    bodies = [
        job({"power_source": "x; touch /tmp/hwnas-fuzz-pwned"}),
        job({"power_options": {"command": "touch /tmp/hwnas-fuzz-pwned"}}),
        job({"power_source": "command"}), job({"power_source": "../../bin/sh"}),
        job({"timeout_s": 1e308}), job({"rounds": -1}), job({"batch_size": True}),
        job({"execution_providers": []}), job({"provider_options": [{"a": 1}] * 5}),
        job({"cpu_affinity": [99999]}), job({"cooldown_below_c": "hot"}),
        b'{"model_sha256": "' + b"f" * 64 + b'"}', b"[" * 50000 + b"]" * 50000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000, b"NaN", b'{"model_sha256": NaN}', b"\xff\xfe{}",
        b"{" + b'"k": 1,' * 20000 + b'"z": 2}', json.dumps({"model_sha256": 5}).encode(),
    ]
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600)))
    if kind == 1:
        full = http(b"POST", b"/v1/jobs", rng.choice(bodies), auth)
        return full[:rng.randint(1, len(full) - 1)]
    if kind == 2:
        method = rng.choice([b"GET", b"POST", b"PUT", b"BREW", b"\xff", b"DELETE", b"OPTIONS"])
        path = rng.choice([b"/v1/jobs", b"/v1/models/zz", b"/v1/hello", b"/v1/jobs/../../etc",
                           b"/%00", b"/v1/models/" + b"a" * 64 + b"/../../x", b"//v1//hello",
                           b"/v1/jobs/" + b"a" * 5000, b"/v1/facts?" + b"&" * 3000])
        return http(method, path, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 99))),
                    rng.choice([auth, wrong, b""]), length=rng.choice([None, -5, 10 ** 12, 3]))
    if kind in (3, 4):
        return http(b"POST", b"/v1/jobs", rng.choice(bodies), rng.choice([auth, auth, wrong, b""]))
    if kind == 5:
        return b"GET /v1/hello HTTP/1.1\r\n" + rng.choice([
            b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", b"X-h: 1\r\n" * 300 + b"\r\n",
            auth * 50 + b"\r\n"])
    if kind == 6:
        return http(b"GET", rng.choice([b"/v1/hello", b"/v1/facts", b"/v1/jobs/abc"]), b"",
                    rng.choice([wrong, b"Authorization: " + token.encode() + b"\r\n",
                                b"Authorization: Bearer\r\n", b"Authorization: Basic eDp5\r\n",
                                f"Authorization: Bearer {token[:-1]}\r\n".encode(), b""]))
    if kind == 7:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000)))
        return http(b"PUT", b"/v1/models/" + b"b" * 64, body, auth)  # sha256 mismatch
    if kind == 8:
        return http(b"PUT", b"/v1/models/" + b"c" * 64, b"x" * 1000, auth, length=10_000_000)
    if kind == 9:
        wait = rng.choice([b"1e9", b"nan", b"-1", b"inf", b"0x10", b"", b"1" * 400])
        return http(b"GET", b"/v1/jobs/" + rng.choice([b"0" * 32, b"..", b"a%2F..%2F.."])
                    + b"?wait=" + wait, b"", auth)
    if kind == 10:
        return http(b"PUT", b"/v1/models/" + b"d" * 64, b"x" * 10, b"", length=100_000)
    return http(b"GET", b"/v1/models/" + rng.choice([b"A" * 64, b"../" * 20, b"%2e%2e"]), b"",
                rng.choice([auth, b""]))


def send_one(port: int, payload: bytes) -> str:
    """Send a request, half-close, and classify the answer by its status line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the agent may answer and close before all of a bomb was sent
            reply = sock.recv(64)
    except OSError:
        return "no answer"
    if not reply.startswith(b"HTTP/"):
        return "no answer"
    return reply.split(b" ", 2)[1].decode()


class SlowLoris:
    """``count`` connections that send a request's headers one byte at a time; a connection
    the agent drops is opened again, so the pressure lasts."""

    HEAD = b"GET /v1/hello HTTP/1.1\r\nX-Slow: "

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.sockets: list[socket.socket | None] = [None] * count
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, index: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            sock.sendall(self.HEAD)
            sock.setblocking(False)
            self.sockets[index] = sock
        except OSError:
            self.sockets[index] = None

    def _run(self) -> None:
        for index in range(self.count):
            self._open(index)
        while not self._stop.is_set():
            for index in range(self.count):
                if self._stop.is_set():
                    break
                sock = self.sockets[index]
                try:
                    if sock is None:
                        raise OSError
                    sock.send(b"a")
                    if sock.recv(1, socket.MSG_PEEK) == b"":  # the agent closed it
                        raise OSError
                except BlockingIOError:
                    pass
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.reopened += 1
                    self._open(index)
                time.sleep(0.002)

    def start(self) -> "SlowLoris":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            if sock is not None:
                sock.close()


def fuzz(requests: int, slow: int, seconds: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="hwnas-fuzz-") as tmp:
        folder = Path(tmp)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by the agent
        try:
            agent = LocalAgentProcess(folder / "state")
            agent.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        agent_limit = Path(f"/proc/{agent.process.pid}/limits").read_text()
        client = agent.client("fuzz")
        small = small_model(folder)
        client.ensure_model(small)
        pid, port, token = agent.process.pid, agent.port, agent.token
        peaks = {"fds": 0, "Threads": 0, "VmRSS": 0}
        controller: dict[str, Any] = {"hello_ms": [], "hello_failures": 0, "measured": 0,
                                      "measure_failures": 0, "errors": []}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for key, value in proc_status(pid).items():
                    peaks[key] = max(peaks[key], value)
                time.sleep(0.05)

        def legit() -> None:
            rounds = 0
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    client.hello()
                    controller["hello_ms"].append((time.perf_counter() - started) * 1000)
                except Exception as exc:  # counted: the figure is how often this happens
                    controller["hello_failures"] += 1
                    controller["errors"].append(repr(exc)[:200])
                rounds += 1
                if rounds % 5 == 0:
                    try:
                        client.measure(quick(small.sha256))
                        controller["measured"] += 1
                    except Exception as exc:
                        controller["measure_failures"] += 1
                        controller["errors"].append(repr(exc)[:200])
                time.sleep(0.2)

        threads = [threading.Thread(target=sample, daemon=True),
                   threading.Thread(target=legit, daemon=True)]
        loris = SlowLoris(port, slow).start()
        for thread in threads:
            thread.start()
        outcomes: dict[str, int] = {}
        server_errors: list[str] = []
        started = time.monotonic()
        sent = 0
        while sent < requests and time.monotonic() - started < seconds:
            payload = hostile_request(rng, token, small.sha256)
            outcome = send_one(port, payload)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome.startswith("5"):
                server_errors.append(f"{outcome}: {payload[:160]!r}")
            sent += 1
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # the controller keeps going a little while the loris still holds
        stop.set()
        for thread in threads:
            thread.join()
        loris.stop()
        survived = alive(pid)
        final = client.measure(quick(small.sha256)).iterations >= 5 if survived else False
        pwned = Path("/tmp/hwnas-fuzz-pwned").exists()
        agent.stop()
    limit_line = next(line for line in agent_limit.splitlines() if line.startswith("Max open files"))
    return {
        "hostile_requests": sent, "seconds": elapsed, "slow_connections": slow,
        "slow_connections_reopened": loris.reopened, "answers": outcomes,
        "answers_5xx": sum(n for code, n in outcomes.items() if code.startswith("5")),
        "answers_5xx_requests": server_errors[:20], "agent_open_file_limit": limit_line.split()[3],
        "agent_peak_open_files": peaks["fds"], "agent_peak_threads": peaks["Threads"],
        "agent_peak_rss_mb": peaks["VmRSS"] / 1024.0,
        "controller_hellos": len(controller["hello_ms"]),
        "controller_hello_ms_median": median(controller["hello_ms"]),
        "controller_hello_ms_max": max(controller["hello_ms"] or [float("nan")]),
        "controller_hello_failures": controller["hello_failures"],
        "controller_measured": controller["measured"],
        "controller_measure_failures": controller["measure_failures"],
        "controller_errors": controller["errors"][:5],
        "agent_survived": survived, "measures_after": final, "command_ran": pwned,
    }


def print_fuzz(result: dict[str, Any]) -> None:
    rows = [["hostile requests", f"{result['hostile_requests']} in {result['seconds']:.0f} s"],
            ["slow connections (reopened)", f"{result['slow_connections']} "
                                            f"({result['slow_connections_reopened']})"],
            ["answers", ", ".join(f"{k}: {v}" for k, v in sorted(result["answers"].items()))],
            ["5xx answers", str(result["answers_5xx"])],
            ["agent file limit / peak open files", f"{result['agent_open_file_limit']} / "
                                                   f"{result['agent_peak_open_files']}"],
            ["agent peak threads / RSS MB", f"{result['agent_peak_threads']} / "
                                            f"{result['agent_peak_rss_mb']:.0f}"],
            ["controller hellos (failed)", f"{result['controller_hellos']} "
                                           f"({result['controller_hello_failures']})"],
            ["controller hello ms median / max", f"{result['controller_hello_ms_median']:.1f} / "
                                                 f"{result['controller_hello_ms_max']:.1f}"],
            ["controller measurements (failed)", f"{result['controller_measured']} "
                                                 f"({result['controller_measure_failures']})"],
            ["agent alive and measuring after", str(result["agent_survived"] and
                                                    result["measures_after"])],
            ["a command from the wire ran", str(result["command_ran"])]]
    print(table(["fuzz", "outcome"], rows))


# -- kill -9: agent and worker -------------------------------------------------------------------


def kill_runs(target: str, runs: int, seed: int) -> dict[str, Any]:
    from hwnas.testing.models import matmul_onnx

    rng = random.Random(seed)
    per_run = []
    with tempfile.TemporaryDirectory(prefix=f"hwnas-kill-{target}-") as tmp:
        folder = Path(tmp)
        state = folder / "state"
        marker = str(state).encode()
        small = small_model(folder)
        # a meter program under each measure worker: it must not outlive the worker either
        meter = folder / "meter.sh"
        meter.write_text("while :; do echo 3.0 W; sleep 0.05; done\n")
        sources = {"meter": {"kind": "command", "options": {"command": ["sh", str(meter)],
                                                            "rate_hz": 20}}}
        for run in range(runs):
            agent = LocalAgentProcess(state, power_sources=sources)
            agent.start()
            client = agent.client("kill")
            client.ensure_model(small)
            upload = None
            if target == "agent":  # an upload in its load check when the kill comes, sometimes
                big = Artifact.from_file(matmul_onnx(folder / f"big{run}.onnx", 30, seed=run), {}, 0)
                upload = threading.Thread(target=_try, args=(agent.client("up").ensure_model, big))
            with OverlapMonitor(marker) as monitor:
                jobs = [client.submit(metered(small.sha256, rng.uniform(0.2, 0.8)))
                        for _ in range(3)]
                done_before = {}
                if upload is not None:
                    upload.start()
                # the agent: any moment of its work; a worker: any moment of one job's worker
                chosen = rng.randrange(len(jobs))
                deadline = time.monotonic() + rng.uniform(0.05, 12.0 if target == "agent" else 0.3)
                victims: list[int] = []
                give_up = time.monotonic() + 60
                while not victims and time.monotonic() < give_up:
                    while time.monotonic() < deadline:  # what the controller saw finish before
                        for job_id in jobs:
                            record = client.job(job_id)
                            if record["state"] == "done":
                                done_before[job_id] = record["measurement"]["latency_ms"]
                        time.sleep(0.02)
                    if target == "agent":
                        victims = [agent.process.pid]
                    elif client.job(jobs[chosen])["state"] == "running":
                        time.sleep(rng.uniform(0.0, 1.5))  # into that worker's life
                        victims = measure_workers(marker)
                    deadline = time.monotonic() + 0.02
                before = cmdlines()
                agent_pid = agent.process.pid
                # what must die with the victim: the agent's workers, and every meter program
                children = [pid for pid, text in before.items()
                            if f"--parent-pid\0{agent_pid}\0".encode() in text
                            or str(meter).encode() in text]
                for pid in victims:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(3.0)
                orphans = [pid for pid in victims + children if alive(pid)
                           and not (target == "worker" and pid == agent_pid)]
                if target == "agent":
                    agent.process.wait()
                    if upload is not None:
                        upload.join()
                    agent.stop()
                    agent = LocalAgentProcess(state, power_sources=sources)
                    agent.start()
                    client = agent.client("kill")
                leftover_uploads = len(list((state / "models").glob(".upload-*")))
                finished = {}
                for job_id in jobs:
                    try:
                        finished[job_id] = client.wait(job_id, 60)
                    except Exception:
                        finished[job_id] = {"state": "stuck"}
            lost = sum(1 for job_id, latency in done_before.items()
                       if finished[job_id].get("state") != "done"
                       or finished[job_id]["measurement"]["latency_ms"] != latency)
            spans = sorted((r["measurement"]["worker_started_unix_time"],
                            r["measurement"]["worker_finished_unix_time"])
                           for r in _all_done(state))
            overlapping_spans = sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
            per_run.append({
                "run": run, "killed": len(victims), "done_before_kill": len(done_before),
                "results_lost": lost, "overlap_samples": monitor.overlaps,
                "max_concurrent_workers": monitor.max_seen, "overlapping_spans": overlapping_spans,
                "orphans": len(orphans), "leftover_uploads": leftover_uploads,
                "never_finished": sum(r.get("state") == "stuck" for r in finished.values()),
                "states": sorted(r.get("state", "?") for r in finished.values())})
            agent.stop()
            print(f"  {target} run {run}: {per_run[-1]}", flush=True)
    totals = {key: sum(r[key] for r in per_run) for key in
              ("killed", "done_before_kill", "results_lost", "overlap_samples", "overlapping_spans",
               "orphans", "leftover_uploads", "never_finished")}
    return {"target": target, "runs": runs, "totals": totals,
            "max_concurrent_workers": max(r["max_concurrent_workers"] for r in per_run),
            "per_run": per_run}


def _try(action: Callable[..., Any], *args: Any) -> None:
    try:
        action(*args)
    except Exception:  # the agent was killed under it: expected
        pass


def _all_done(state: Path) -> list[dict[str, Any]]:
    records = []
    for job in (state / "jobs").iterdir():
        try:
            status = json.loads((job / "state.json").read_text())
            if status["state"] == "done":
                records.append({"measurement": json.loads((job / "result.json").read_text())})
        except (OSError, ValueError, KeyError):
            continue
    return records


# -- flood: long-polls from one token holder, and two workers wanting memory at once ------------


def agent_workers(agent_pid: int) -> list[tuple[int, float]]:
    """(pid, VmRSS MB) of every live worker the agent started."""
    marker = f"--parent-pid\0{agent_pid}\0".encode()
    found = []
    for pid, text in cmdlines().items():
        if b"hwnas_agent.worker" in text and marker in text:
            rss = proc_status(pid).get("VmRSS")
            if rss is not None:
                found.append((pid, rss / 1024.0))
    return found


def open_connections(pid: int) -> int:
    """The agent's sockets, less its listening one."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return 0
    return max(0, sum(link.startswith("socket:") for link in links) - 1)


def long_poll(port: int, token: str, job_id: str, wait_s: float) -> tuple[str, bool, str, float]:
    """(status or 'no answer', cut short, job state, seconds) of one GET /v1/jobs/<id>?wait=S."""
    import http.client

    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=wait_s + 30)
    try:
        connection.request("GET", f"/v1/jobs/{job_id}?wait={wait_s:g}",
                           headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
        return (str(response.status), "wait" in body, str(body.get("state")),
                time.monotonic() - started)
    except (OSError, ValueError, http.client.HTTPException):
        return "no answer", False, "", time.monotonic() - started
    finally:
        connection.close()


def flood(polls: int, max_requests: int, seconds: float, limit_mb: float) -> dict[str, Any]:
    from hwnas.testing.models import matmul_onnx

    with tempfile.TemporaryDirectory(prefix="hwnas-flood-") as tmp:
        folder = Path(tmp)
        agent = LocalAgentProcess(folder / "state", worker_memory_mb=limit_mb)
        agent.start()
        pid, port, token = agent.process.pid, agent.port, agent.token
        client = agent.client("flood")
        measured = Artifact.from_file(matmul_onnx(folder / "measured.onnx", 150, seed=1), {}, 0)
        uploaded = Artifact.from_file(matmul_onnx(folder / "uploaded.onnx", 150, seed=2), {}, 0)
        client.ensure_model(measured)
        stop = threading.Event()
        memory = {"max_mb": 0.0, "max_workers": 0, "samples": 0}
        connections = {"max": 0}
        third: dict[str, Any] = {"hello_ms": [], "facts_ms": [], "failures": 0, "errors": []}
        polls_out: dict[str, Any] = {"sent": 0, "answers": {}, "cut_short": 0, "held": 0,
                                     "held_max_s": 0.0}
        job_over = threading.Event()  # the flood is on the running job: it ends with it
        lock = threading.Lock()

        def sample() -> None:
            while not stop.is_set():
                rows = agent_workers(pid)
                memory["max_mb"] = max(memory["max_mb"], sum(mb for _, mb in rows))
                memory["max_workers"] = max(memory["max_workers"], len(rows))
                memory["samples"] += 1
                connections["max"] = max(connections["max"], open_connections(pid))
                time.sleep(0.005)

        def poller() -> None:
            while not stop.is_set() and not job_over.is_set():
                with lock:
                    if polls_out["sent"] >= max_requests:
                        return
                    polls_out["sent"] += 1
                status, cut, state, took = long_poll(port, token, job_id, 60.0)
                with lock:
                    polls_out["answers"][status] = polls_out["answers"].get(status, 0) + 1
                    polls_out["cut_short"] += cut
                    if status == "200" and not cut and took > 1.0:  # held until the job ended
                        polls_out["held"] += 1
                        polls_out["held_max_s"] = max(polls_out["held_max_s"], took)

        def third_client() -> None:
            other = agent.client("third")
            while not stop.is_set():
                for ask, key in ((other.hello, "hello_ms"), (other.facts, "facts_ms")):
                    started = time.perf_counter()
                    try:
                        ask()
                        third[key].append((time.perf_counter() - started) * 1000)
                    except Exception as exc:  # counted: the figure is how often this happens
                        third["failures"] += 1
                        third["errors"].append(repr(exc)[:200])
                time.sleep(0.1)

        job_id = client.submit(MeasureRequest(
            model_sha256=measured.sha256, warmup_seconds=0.0, warmup_iterations=2,
            min_iterations=5, min_seconds=seconds, rounds=1, timeout_s=seconds + 120))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while client.job(job_id)["state"] == "queued":
            time.sleep(0.05)
        time.sleep(1.5)  # the measured model is loaded: its timed phase runs
        started = time.monotonic()
        upload_s: dict[str, float] = {}

        def upload() -> None:
            began = time.monotonic()
            agent.client("uploader").ensure_model(uploaded)
            upload_s["seconds"] = time.monotonic() - began

        threads = [threading.Thread(target=upload, daemon=True),
                   threading.Thread(target=third_client, daemon=True)]
        threads += [threading.Thread(target=poller, daemon=True) for _ in range(polls)]
        for thread in threads:
            thread.start()
        record = client.wait(job_id, seconds + 120)
        job_over.set()
        threads[0].join(timeout=120)
        elapsed = time.monotonic() - started
        stop.set()
        for thread in threads[1:]:
            thread.join(timeout=65)
        sampler.join()
        stored = client._call("GET", f"/v1/models/{uploaded.sha256}").json()
        job_end = record["started_unix_time"] + record.get("job_wall_seconds", 0.0)
        agent.stop()
    answers = polls_out["answers"]
    return {
        "long_polls": polls, "long_poll_bound_requests": max_requests,
        "long_poll_requests_sent": polls_out["sent"], "long_poll_answers": answers,
        "long_polls_held": polls_out["held"], "long_polls_cut_short": polls_out["cut_short"],
        "long_poll_held_max_s": polls_out["held_max_s"],
        "answers_5xx": sum(n for code, n in answers.items() if code.startswith("5")),
        "no_answer": answers.get("no answer", 0), "seconds": elapsed,
        "agent_connections_max": connections["max"],
        "third_hellos": len(third["hello_ms"]), "third_facts": len(third["facts_ms"]),
        "third_failures": third["failures"], "third_errors": third["errors"][:5],
        "third_hello_ms_median": median(third["hello_ms"]),
        "third_hello_ms_max": max(third["hello_ms"] or [float("nan")]),
        "third_facts_ms_max": max(third["facts_ms"] or [float("nan")]),
        "worker_memory_limit_mb": limit_mb, "workers_rss_mb_max": memory["max_mb"],
        "workers_at_once_max": memory["max_workers"], "memory_samples": memory["samples"],
        "upload_seconds": upload_s.get("seconds"),
        "load_check_waited_for_the_job": stored.get("stored_unix_time", 0.0) >= job_end,
        "job_state": record["state"],
        "job_latency_ms_p50": (record.get("measurement") or {}).get("latency_ms", {}).get("p50"),
    }


def print_flood(result: dict[str, Any]) -> None:
    rows = [["long-polls at once / requests sent", f"{result['long_polls']} / "
                                                   f"{result['long_poll_requests_sent']} "
                                                   f"in {result['seconds']:.0f} s"],
            ["answers", ", ".join(f"{k}: {v}"
                                  for k, v in sorted(result["long_poll_answers"].items()))],
            ["held to the job's end / cut short at once", f"{result['long_polls_held']} / "
                                                          f"{result['long_polls_cut_short']}"],
            ["5xx answers / no answer", f"{result['answers_5xx']} / {result['no_answer']}"],
            ["agent open connections (max)", str(result["agent_connections_max"])],
            ["third client hellos, facts (failed)", f"{result['third_hellos']}, "
                                                    f"{result['third_facts']} "
                                                    f"({result['third_failures']})"],
            ["hello ms median / max", f"{result['third_hello_ms_median']:.1f} / "
                                      f"{result['third_hello_ms_max']:.1f}"],
            ["workers' RSS together, max MB / limit", f"{result['workers_rss_mb_max']:.0f} / "
                                                      f"{result['worker_memory_limit_mb']:.0f}"],
            ["workers at once (max)", str(result["workers_at_once_max"])],
            ["load check waited for the job", str(result["load_check_waited_for_the_job"])],
            ["job", f"{result['job_state']}, p50 {result['job_latency_ms_p50']} ms"]]
    print(table(["flood", "value"], rows))


# -- kill -9: the controller ---------------------------------------------------------------------



def controller_space(seed: int, trials: int) -> str:
    """The test suite's digits search, with a shorter fine-tuning: kills land in every phase."""
    import yaml

    sys.path.insert(0, str(REPO))
    from tests.conftest import DIGITS_SPACE

    space = yaml.safe_load(textwrap.dedent(DIGITS_SPACE))
    space["finetune"].update(max_steps=15, max_seconds=3)
    space["search"] = {"n_trials": trials, "sampler": "random", "seed": seed}
    return yaml.safe_dump(space)


def study_state(run_dir: Path) -> dict[str, Any]:
    from hwnas.records import TrialOutcome
    from hwnas.run import RunFolder

    try:
        study = RunFolder.load(run_dir).open_study()
    except Exception:
        return {"complete": {}, "outcomes": [], "states": []}
    trials = study.get_trials(deepcopy=False)
    outcomes = [TrialOutcome.from_trial(t) for t in trials]
    return {"complete": {t.number: json.dumps(t.params, sort_keys=True) for t in trials
                         if t.state.name == "COMPLETE"},
            "outcomes": outcomes, "states": [t.state.name for t in trials]}


def search(space: Path, device: Path, run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([HWNAS, "search", str(space), "--device", str(device), "--run-dir",
                             str(run_dir), "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def controller_runs(runs: int, trials: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    per_run = []
    with tempfile.TemporaryDirectory(prefix="hwnas-kill-controller-") as tmp:
        folder = Path(tmp)
        env = dict(os.environ, HWNAS_CACHE_DIR=str(folder / "cache"))
        sys.path.insert(0, str(REPO))
        from tests.conftest import FAST_DEVICE

        device = folder / "device.yaml"
        device.write_text(FAST_DEVICE)
        # two full runs first: one trains the cached base model, one times a whole search
        for warm_up in range(2):
            space = folder / f"warm{warm_up}.yaml"
            space.write_text(controller_space(seed + 1000 + warm_up, trials))
            started = time.monotonic()
            warm = search(space, device, folder / f"warm{warm_up}", env)
            _, err = warm.communicate()
            if warm.returncode != 0:
                raise SystemExit("the warm-up search failed: " + err.decode()[-2000:])
            full_s = time.monotonic() - started
        for run in range(runs):
            space = folder / f"space{run}.yaml"
            space.write_text(controller_space(seed + 1 + run, trials))
            run_dir = folder / f"run{run}"
            process = search(space, device, run_dir, env)
            kill_after = rng.uniform(0.1, 0.95) * full_s
            deadline = time.monotonic() + kill_after
            agents: set[int] = set()
            workers: set[int] = set()
            while time.monotonic() < deadline and process.poll() is None:
                seen = cmdlines()  # the controller's agent and that agent's workers, as they come
                agents |= {pid for pid, text in seen.items()
                           if f"--parent-pid\0{process.pid}\0".encode() in text}
                workers |= {pid for pid, text in seen.items() for agent in agents
                            if f"--parent-pid\0{agent}\0".encode() in text}
                time.sleep(0.05)
            finished_first = process.poll() is not None
            # the killed run's local agent keeps its jobs in its state folder (named in its
            # command line): what it measured that the study may not know
            state_dirs = {text.split(b"--config\0", 1)[1].split(b"\0", 1)[0].decode()
                          for pid, text in cmdlines().items() if pid in agents
                          and b"--config\0" in text}
            process.kill()
            process.communicate()
            before = study_state(run_dir)
            time.sleep(3.0)
            seen = cmdlines()
            orphans = [pid for pid in agents | workers if alive(pid)] + [
                pid for pid, text in seen.items()
                if f"--parent-pid\0{process.pid}\0".encode() in text
                or any(f"--parent-pid\0{a}\0".encode() in text for a in agents)]
            rerun = search(space, device, run_dir, env)
            _, err = rerun.communicate()
            after = study_state(run_dir)
            lost = sum(1 for number, params in before["complete"].items()
                       if after["complete"].get(number) != params)
            # the same bytes measured by more than one agent job (a measurement reused by a
            # retried trial is the same job: it counts once)
            jobs_per_model: dict[str, set[Any]] = {}
            for outcome in after["outcomes"]:
                for found in (outcome.screen_measurement, outcome.measurement):
                    if found is not None:
                        job = (found.agent_report.get("worker_started_unix_time"),
                               found.latency_ms_p50, found.iterations)
                        jobs_per_model.setdefault(found.model_sha256, set()).add(job)
            # bytes the killed run's agent finished measuring that the rerun measured again
            killed_jobs = _done_models(state_dirs)
            remeasured = sum(1 for sha, started in killed_jobs
                             if any(job[0] != started for job in jobs_per_model.get(sha, ())))
            for config in state_dirs:  # hwnas leaves the dead agent's temp folder: tidy it here
                shutil.rmtree(Path(config).parent, ignore_errors=True)
            per_run.append({
                "run": run, "kill_after_s": kill_after, "finished_before_kill": finished_first,
                "agent_jobs_done_at_kill": len(killed_jobs), "remeasured_after_kill": remeasured,
                "complete_before_kill": len(before["complete"]),
                "complete_after_rerun": len(after["complete"]), "rerun_exit": rerun.returncode,
                "trials_lost": lost,
                "measured_twice": sum(len(j) - 1 for j in jobs_per_model.values()),
                "left_running": after["states"].count("RUNNING"),
                "orphans": len(set(orphans)), "states": after["states"],
                "rerun_error": err.decode()[-300:] if rerun.returncode else ""})
            print(f"  controller run {run}: {per_run[-1]}", flush=True)
    totals = {key: sum(r[key] for r in per_run) for key in
              ("trials_lost", "measured_twice", "remeasured_after_kill", "left_running",
               "orphans", "agent_jobs_done_at_kill")}
    totals["rerun_failures"] = sum(r["rerun_exit"] != 0 for r in per_run)
    return {"target": "controller", "runs": runs, "trials_per_search": trials,
            "full_search_s": full_s, "totals": totals, "per_run": per_run}


def _done_models(configs: set[str]) -> list[tuple[str, float]]:
    """(model sha256, worker start time) of every job done in these agents' state folders."""
    found = []
    for config in configs:
        for job in (Path(config).parent / "jobs").glob("*"):
            try:
                if json.loads((job / "state.json").read_text())["state"] != "done":
                    continue
                result = json.loads((job / "result.json").read_text())
                found.append((result["model_sha256"], result["worker_started_unix_time"]))
            except (OSError, ValueError, KeyError):
                continue
    return found


def print_kills(result: dict[str, Any]) -> None:
    totals = result["totals"]
    rows = [[key.replace("_", " "), str(value)] for key, value in totals.items()]
    if "max_concurrent_workers" in result:
        rows.append(["max measure workers at once", str(result["max_concurrent_workers"])])
    print(table([f"kill -9 {result['target']} x {result['runs']}", "total"], rows))


# -- bad inputs: one line and exit 2 -------------------------------------------------------------


BOMB = "\n".join(["bomb0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
    f"bomb{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]) + "\n"
HOLD_LOCK = ("import sys, time\nfrom hwnas.run_lock import writer_lock\n"
             "with writer_lock(sys.argv[1], 'hwnas search'):\n"
             "    print('held', flush=True)\n    time.sleep(3600)\n")
CASE_MEMORY = 6 << 30  # an input that makes hwnas allocate without bound fails, not the machine


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CASE_MEMORY, CASE_MEMORY))


def _run_folder(folder: Path, space: Path, device: Path) -> Path:
    """A run folder as `hwnas search` leaves it (configs recorded, a real SQLite study with
    finished trials), made without a search."""
    import optuna

    from hwnas.config import load_device_profile, load_search_space
    from hwnas.records import TrialOutcome, TrialStage
    from hwnas.run import RunFolder
    from hwnas.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = RunFolder.locate(load_search_space(space), load_device_profile(device), folder)
    run.path.mkdir(parents=True)
    run.record_configs(space, [device])
    study = optuna.create_study(storage=make_storage(run.storage_url), study_name=run.study_name,
                                directions=["maximize", "minimize", "minimize"])
    for number in range(20):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, params={"x": number},
            distributions={"x": optuna.distributions.IntDistribution(0, 100)},
            user_attrs=TrialOutcome(TrialStage.FAILED, failure="x" * 2000).attributes()))
    return run.path


def bad_input_cases(folder: Path, stack: Any) -> list[tuple[str, list[str] | str]]:
    """(name, argv) per case, or (name, why it is skipped here). Each is refused from its
    inputs, before any training: seconds each."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

    def write(name: str, text: str | bytes) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    good = textwrap.dedent(DIGITS_SPACE) + ENQUEUED
    device = write("device.yaml", FAST_DEVICE)

    def search(space: Path | str, *extra: str) -> list[str]:
        return [HWNAS, "search", str(space), "--device", str(device), "--no-progress",
                "--run-dir", str(folder / "runs" / Path(str(space)).stem), *extra]

    cases: list[tuple[str, list[str] | str]] = [
        ("yaml syntax error", search(write("syntax.yaml", "name: x\nbase_model: {builtin: a\n"))),
        ("yaml not a mapping", search(write("list.yaml", "- a\n- b\n"))),
        ("empty yaml", search(write("empty.yaml", ""))),
        ("binary file as yaml", search(write("binary.yaml", bytes(range(256)) * 4))),
        ("yaml alias bomb", search(write("bomb.yaml", good + BOMB))),
        ("unknown key", search(write("unknown.yaml", good.replace("finetune:", "finetuen:")))),
        ("wrong type", search(write("type.yaml", good.replace("n_trials: 5", "n_trials: many")))),
        ("seed 1e29", search(write("seed.yaml", good.replace("seed: 3", "seed: 1e29")))),
        ("inf budget", search(write("inf.yaml", good.replace("latency_p90_ms: 2.0",
                                                             "latency_p90_ms: .inf")))),
        ("negative budget", search(write("negative.yaml", good.replace(
            "latency_p90_ms: 2.0", "latency_p90_ms: -1")))),
        ("space is a folder", search(folder)),
        ("device profile missing", [HWNAS, "search", str(write("good.yaml", good)), "--device",
                                    str(folder / "nowhere.yaml")]),
        ("agent port 99999", [HWNAS, "agent", "status", str(write(
            "port.yaml", "name: p\nconnection: {kind: ssh, host: 127.0.0.1, agent_port: 99999}\n"))]),
        ("--trials 0", search(folder / "good.yaml", "--trials", "0")),
        ("run dir under a file", [HWNAS, "search", str(folder / "good.yaml"), "--device",
                                  str(device), "--run-dir", str(write("afile", "x") / "run")]),
        ("report of a non-run folder", [HWNAS, "report", str(folder)]),
        ("profile of a non-ONNX file", [HWNAS, "profile", str(write("x.onnx", b"not onnx")),
                                        "--device", str(device)]),
        ("rebuild of a garbage plan", [HWNAS, "rebuild", str(write("x.plan.json", "{]"))]),
        ("data set missing", search(write("nodata.yaml", good.replace(
            "dataset: {builtin: digits,", f"dataset: {{builtin: fashion-mnist, path: "
                                         f"{folder / 'empty'},")))),
    ]
    (folder / "empty").mkdir()
    space = folder / "good.yaml"
    run = _run_folder(folder / "run", space, device)
    cases.append(("export of no such trial", [HWNAS, "export", str(run), "--trial", "999"]))
    for name, how in (("truncated", "half"), ("garbage", "garbage")):
        damaged = folder / f"run-{name}"
        shutil.copytree(run, damaged)
        (damaged / "run.json").write_text((run / "run.json").read_text().replace(
            str(run.resolve()), str(damaged.resolve())))
        data = (damaged / "study.db").read_bytes()
        (damaged / "study.db").write_bytes(data[:len(data) // 2] if how == "half"
                                           else bytes(range(256)) * (len(data) // 256))
        cases.append((f"{name} study.db: search resumes",
                      [HWNAS, "search", str(space), "--device", str(device), "--run-dir",
                       str(damaged), "--no-progress"]))
        cases.append((f"{name} study.db: status", [HWNAS, "status", str(damaged)]))
    holder = stack.enter_context(subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)],
                                                  stdout=subprocess.PIPE, text=True))
    stack.callback(holder.kill)
    holder.stdout.readline()
    cases.append(("second writer of a run folder", [HWNAS, "search", str(space), "--device",
                                                    str(device), "--run-dir", str(run)]))
    cases.append(("finalize of a folder in use", [HWNAS, "finalize", str(run)]))
    if shutil.which("sshd") or Path("/usr/sbin/sshd").exists():
        from hwnas.testing.sshd import LoopbackDevice, keygen

        for name, subsystem in (("no SFTP subsystem", None), ("SFTP server exits", "/bin/true"),
                                ("link dropped as SFTP opens", "kill -9 $PPID")):
            where = folder / "ssh" / name.replace(" ", "-")
            where.parent.mkdir(parents=True, exist_ok=True)
            device_ssh = LoopbackDevice(where, keygen(where.parent / f"{where.name}.key"))
            stack.callback(device_ssh.stop)
            device_ssh.server.serve_sftp(subsystem)
            cases.append((f"device: {name}", [HWNAS, "agent", "status",
                                              str(device_ssh.profile())]))
    else:
        cases.append(("device: no SFTP subsystem", "no sshd on this machine"))
    disk = folder / "full"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode == 0:
        stack.callback(subprocess.run, ["umount", "-l", str(disk)], capture_output=True)
        with open(disk / "filler", "wb", buffering=0) as handle:  # until the disk is full
            _try(lambda: [handle.write(b"\0" * 65536) for _ in range(64)])
        cases.append(("full disk", [HWNAS, "report", str(run), "--out", str(disk / "report")]))
    else:
        cases.append(("full disk", f"mount -t tmpfs not permitted: {mounted.stderr.strip()}"))
    tables = REPO.parent / "shared" / "data" / "hw-nas-bench"
    if (tables / "hw_cifar10.csv").exists():
        cases.append(("replay without Fashion-MNIST", [
            sys.executable, str(REPO / "benchmarks" / "search_replay.py"), "--accuracy",
            str(tables / "nb201_valid_nets.csv"), "--hardware", str(tables / "hw_cifar10.csv"),
            "--metric", "raspi4_latency", "--budget-quantile", "0.1", "--seeds", "1",
            "--strategies", "hwnas", "--json", str(folder / "replay.json"), "--fashion-mnist",
            str(folder / "empty")]))
    else:
        cases.append(("replay without Fashion-MNIST", f"no NAS-Bench-201 tables in {tables}"))
    return cases


def bad_inputs(timeout: float) -> dict[str, Any]:
    """Each bad input as a real CLI subprocess: does it end in exactly one line on stderr and
    exit code 2 (no traceback, no usage block, no library warnings)?"""
    import contextlib

    rows = []
    with tempfile.TemporaryDirectory(prefix="hwnas-badinputs-") as tmp, \
            contextlib.ExitStack() as stack:
        folder = Path(tmp)
        env = dict(os.environ, HWNAS_CACHE_DIR=str(folder / "cache"))
        for name, argv in bad_input_cases(folder, stack):
            if isinstance(argv, str):
                rows.append({"case": name, "skipped": argv})
                continue
            started = time.monotonic()
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                      env=env, cwd=folder, preexec_fn=_limit_memory)
                code, stderr = done.returncode, done.stderr
            except subprocess.TimeoutExpired as exc:
                code = None
                stderr = (exc.stderr or b"").decode("utf-8", "replace") \
                    if isinstance(exc.stderr, bytes) else exc.stderr or ""
            lines = [line for line in stderr.splitlines() if line.strip()]
            rows.append({"case": name, "exit_code": code, "stderr_lines": len(lines),
                         "traceback": "Traceback" in stderr,
                         "one_line_exit_2": code == 2 and len(lines) == 1,
                         "first_line": lines[0][:300] if lines else "",
                         "last_line": lines[-1][:300] if lines else "",
                         "seconds": round(time.monotonic() - started, 1)})
    ran = [r for r in rows if "skipped" not in r]
    return {"cases": rows, "ran": len(ran), "one_line_exit_2": sum(r["one_line_exit_2"]
                                                                   for r in ran),
            "timeout_s": timeout}


def print_bad_inputs(result: dict[str, Any]) -> None:
    rows = []
    for r in result["cases"]:
        if "skipped" in r:
            rows.append([r["case"], "-", "-", "skipped", r["skipped"][:60]])
            continue
        shown = r["first_line"] if r["stderr_lines"] <= 1 else \
            f"{r['stderr_lines']} lines; last: {r['last_line']}"
        rows.append([r["case"], str(r["exit_code"]), str(r["stderr_lines"]),
                     "yes" if r["one_line_exit_2"] else "NO", shown[:100]])
    print(table(["bad input", "exit", "lines", "one line + exit 2", "stderr"], rows))
    print(f"\n{result['one_line_exit_2']} of {result['ran']} bad inputs end in exactly one line "
          f"on stderr and exit code 2")


def save_part(key: str, part: dict[str, Any]) -> None:
    path = RESULTS / "hardening.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload[key] = dict(part, machine=machine(), command=" ".join(sys.argv[1:]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    print(f"\nsaved {path} [{key}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    f = verbs.add_parser("fuzz")
    f.add_argument("--requests", type=int, default=2400)
    f.add_argument("--slow", type=int, default=1000)
    f.add_argument("--seconds", type=float, default=240.0, help="stop sending after this long")
    f.add_argument("--seed", type=int, default=20261122)
    k = verbs.add_parser("kills")
    k.add_argument("target", choices=["agent", "worker", "controller"])
    k.add_argument("--runs", type=int, default=20)
    k.add_argument("--trials", type=int, default=3, help="trials per search (controller)")
    k.add_argument("--seed", type=int, default=7)
    fl = verbs.add_parser("flood")
    fl.add_argument("--polls", type=int, default=70, help="long-polls kept open at once")
    fl.add_argument("--requests", type=int, default=3000, help="long-polls sent at most")
    fl.add_argument("--seconds", type=float, default=10.0, help="the measured job's timed phase")
    fl.add_argument("--worker-memory-mb", type=float, default=500.0)
    b = verbs.add_parser("badinputs")
    b.add_argument("--timeout", type=float, default=300.0, help="seconds per case at most")
    args = parser.parse_args()
    if args.verb == "flood":
        result = flood(args.polls, args.requests, args.seconds, args.worker_memory_mb)
        print_flood(result)
        save_part("flood", result)
    elif args.verb == "badinputs":
        result = bad_inputs(args.timeout)
        print_bad_inputs(result)
        save_part("badinputs", result)
    elif args.verb == "fuzz":
        result = fuzz(args.requests, args.slow, args.seconds, args.seed)
        print_fuzz(result)
        save_part("fuzz", result)
    elif args.target == "controller":
        result = controller_runs(args.runs, args.trials, args.seed)
        print_kills(result)
        save_part("kill_controller", result)
    else:
        result = kill_runs(args.target, args.runs, args.seed)
        print_kills(result)
        save_part(f"kill_{args.target}", result)


if __name__ == "__main__":
    main()
