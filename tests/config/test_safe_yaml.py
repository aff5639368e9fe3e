"""Every YAML hwnas reads is bounded: a small file cannot take the controller's time or memory
(aliases, nesting), and what it cannot read ends in one line naming the file."""

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from hwnas.config import load_device_profile, load_search_space
from hwnas.errors import ConfigError
from tests.config.test_config import DEVICE, GOOD_SPACE

HWNAS = str(Path(sys.executable).parent / "hwnas")


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Each level a list of ``width`` aliases of the level below: width**levels values."""
    items = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    items += [f"&l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]"
              for level in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def bounded(load, path):
    """The ConfigError ``load(path)`` raises, with the time and the memory it took."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as caught:
            load(path)
        return str(caught.value), time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, text, load", [
    ("space.yaml", GOOD_SPACE + "budgets:\n  latency_p90_ms: " + billion_laughs() + "\n",
     load_search_space),
    ("device.yaml", DEVICE + "budgets:\n  model_size_mb: " + billion_laughs() + "\n",
     load_device_profile),
])
def test_a_billion_laughs_is_refused_in_milliseconds(tmp_path, name, text, load):
    path = tmp_path / name
    path.write_text(text)
    assert len(text) < 1500
    message, seconds, peak_bytes = bounded(load, path)
    assert message.startswith(f"{path}: line ") and "aliases" in message, message
    assert len(message) < 300
    assert seconds < 1.0 and peak_bytes < 5_000_000, (seconds, peak_bytes)


def test_too_many_aliases_are_refused_with_their_line(tmp_path):
    from hwnas.config.safe_yaml import MAX_ALIASES

    path = tmp_path / "space.yaml"
    many = "\n".join("    - *trial" for _ in range(MAX_ALIASES + 1))
    path.write_text(GOOD_SPACE + "search:\n  enqueue:\n    - &trial {keep_stage1: 0.5}\n"
                    f"{many}\n")
    with pytest.raises(ConfigError, match=rf"{path}: line {MAX_ALIASES + 7}, column 7: more "
                                          rf"than {MAX_ALIASES} aliases"):
        load_search_space(path)


def test_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(GOOD_SPACE + "search:\n  enqueue:\n    - &small {keep_stage1: 0.25}\n"
                    "    - *small\n    - {<<: *small, keep_stage2: 0.5}\n")
    enqueued = load_search_space(path).search.enqueue
    assert enqueued == [{"keep_stage1": 0.25}] * 2 + [{"keep_stage1": 0.25, "keep_stage2": 0.5}]


@pytest.mark.parametrize("text, message", [
    ("a: &a [*a]\n", r"line 1, column 8: an alias inside the value it names"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"line 1, column \d+: nested deeper than 64"),
    ("name: x\ncreated: 2020-13-45\n", r"is not valid YAML: month must be in 1..12"),
    ("a: [1\n", r"line 2, column 1 is not valid YAML"),
])
def test_what_cannot_be_read_is_one_config_error(text, message):
    from hwnas.config.safe_yaml import read_yaml

    with pytest.raises(ConfigError, match=rf"^source.yaml:.*{message}"):
        read_yaml(text, "source.yaml")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"{path}: a search space is UTF-8 text; byte 6 is not"):
        load_search_space(path)


def test_a_bomb_in_a_kept_config_is_not_read(tmp_path):
    """The kept copies in a run folder and a study's recorded space are read bounded too."""
    from hwnas.records import StudyRecord
    from hwnas.run import RunFolder
    from hwnas.search.shared import same_sections

    (tmp_path / "configs" / "v1").mkdir(parents=True)
    bomb = GOOD_SPACE + "kwargs: " + billion_laughs() + "\n"
    (tmp_path / "configs" / "v1" / "search_space.yaml").write_text(bomb)
    assert RunFolder(tmp_path, "sqlite://", "s").config("v1") is None
    record = StudyRecord((), "", 0.0, (), {}, search_space_yaml=bomb)
    with pytest.raises(ConfigError, match="the study's recorded search space: line 4"):
        same_sections(record, GOOD_SPACE, ("base_model",))


@pytest.mark.parametrize("verb, flag", [("search", "space"), ("devices", "device")])
def test_the_cli_refuses_a_bomb_in_one_line_with_exit_2(tmp_path, verb, flag):
    space = tmp_path / "space.yaml"
    device = tmp_path / "device.yaml"
    space.write_text(GOOD_SPACE)
    device.write_text(DEVICE)
    bad = space if flag == "space" else device
    bad.write_text(bad.read_text() + "budgets:\n  latency_p90_ms: " + billion_laughs() + "\n")
    argv = [HWNAS, "search", str(space), "--device", str(device), "--run-dir",
            str(tmp_path / "run")] if verb == "search" else [HWNAS, "devices", "check", str(device)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"hwnas: error: {bad}: line {len(bad.read_text().splitlines())}, "
                                  f"column ") and "aliases" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and len(done.stderr) < 300
    assert not (tmp_path / "run").exists()
