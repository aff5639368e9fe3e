"""--torch-device: resolution and refusals on this machine (and on a machine faked to have
GPUs), the accelerator code path run with the CPU standing in for the accelerator, and a tiny
real search: the device recorded in the study, the trials and the model card, and CPU results
the same whether the CPU was asked for or chosen by auto."""

import numpy as np
import pytest
import torch
from torch import nn

from hwnas import torch_device
from hwnas.cli import main
from hwnas.errors import ConfigError
from hwnas.torch_device import available, describe, frozen_copy, resolve
from tests.conftest import DIGITS_SPACE, ENQUEUED, FAST_DEVICE

NO_GPU = not torch.cuda.is_available()


@pytest.fixture()
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch_device, "_mps_available", lambda: False)


@pytest.fixture()
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch_device, "_mps_available", lambda: False)


def test_auto_is_the_cpu_without_an_accelerator(no_accelerator):
    assert resolve("auto") == torch.device("cpu")
    assert resolve(None) == torch.device("cpu")
    assert resolve("CPU") == torch.device("cpu")
    assert available() == ["cpu"]
    assert describe(resolve("auto")) == "cpu"


def test_auto_prefers_the_first_gpu_then_mps(two_gpus, monkeypatch):
    assert resolve("auto") == torch.device("cuda", 0)
    assert resolve("cuda") == torch.device("cuda", 0)
    assert resolve("cuda:1") == torch.device("cuda", 1)
    assert available() == ["cpu", "cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch_device, "_mps_available", lambda: True)
    assert resolve("auto") == torch.device("mps")


def test_cuda_refused_without_cuda_naming_the_option_and_what_there_is(no_accelerator):
    with pytest.raises(ConfigError) as refused:
        resolve("cuda:0")
    message = str(refused.value)
    assert message.startswith("--torch-device cuda:0: this machine has no CUDA device")
    assert "use --torch-device auto or cpu" in message and "this machine has: cpu" in message
    with pytest.raises(ConfigError, match="no Apple MPS device"):
        resolve("mps")


def test_a_gpu_out_of_range_is_refused(two_gpus):
    with pytest.raises(ConfigError, match=r"cuda:2: this machine has 2 CUDA devices "
                                          r"\(cuda:0 to cuda:1\)"):
        resolve("cuda:2")


@pytest.mark.parametrize("spelling", ["gpu", "cuda:x", "cuda0", "tpu", "cuda:-1", "cpu:0"])
def test_a_spelling_that_is_no_torch_device_is_refused(spelling):
    with pytest.raises(ConfigError) as refused:
        resolve(spelling)
    assert f"--torch-device {spelling!r}: not a torch device; allowed: auto, cpu, cuda, " \
           f"cuda:N, mps" in str(refused.value)


def test_the_cpu_reads_the_teacher_itself():
    teacher = nn.Linear(3, 2)
    assert frozen_copy(teacher, "cpu") is teacher


def test_the_accelerator_path_with_the_cpu_standing_in_changes_nothing(monkeypatch):
    """The moves, the teacher's frozen copy and the move back, run here with the CPU playing
    the accelerator: the same weights as the plain CPU path, the student back on the CPU and
    in eval mode, the shared teacher untouched."""
    from hwnas.compress import finetune as module
    from hwnas.config.models import FineTuneSettings
    from hwnas.data import ArraySplit

    class Task:  # what finetune reads of a TaskData
        train = ArraySplit(np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32),
                           np.arange(64) % 3)

    def fresh() -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), \
            nn.Sequential(nn.Linear(6, 3))

    settings = FineTuneSettings(max_steps=5, max_seconds=60, batch_size=8, learning_rate=0.01)
    student, teacher = fresh()
    plain = module.finetune(student, teacher, Task(), settings, seed=4, device="cpu")
    stand_in, stand_in_teacher = fresh()
    before = {k: v.clone() for k, v in stand_in_teacher.state_dict().items()}
    monkeypatch.setattr(module, "is_cpu", lambda device: False)
    monkeypatch.setattr(torch_device, "is_cpu", lambda device: False)
    moved = module.finetune(stand_in, stand_in_teacher, Task(), settings, seed=4, device="cpu")
    assert plain["steps"] == moved["steps"] == 5 and plain["device"] == moved["device"] == "cpu"
    assert plain["final_loss"] == moved["final_loss"]
    for (name, a), (_, b) in zip(student.state_dict().items(), stand_in.state_dict().items()):
        assert torch.equal(a, b), name
    assert not stand_in.training and all(p.device.type == "cpu" for p in stand_in.parameters())
    assert all(torch.equal(v, before[k]) for k, v in stand_in_teacher.state_dict().items())


def test_the_cli_refuses_a_missing_gpu_before_a_run_folder(tmp_path, capsys, no_accelerator):
    space, device, run_dir = tmp_path / "space.yaml", tmp_path / "device.yaml", tmp_path / "run"
    space.write_text(DIGITS_SPACE + ENQUEUED)
    device.write_text(FAST_DEVICE)
    code = main(["search", str(space), "--device", str(device), "--run-dir", str(run_dir),
                 "--no-progress", "--torch-device", "cuda:0"])
    assert code == 2 and not run_dir.exists()
    assert "--torch-device cuda:0: this machine has no CUDA device" in capsys.readouterr().err
    code = main(["finalize", str(run_dir), "--torch-device", "tpu"])
    assert code == 2 and "not a torch device" in capsys.readouterr().err


@pytest.mark.skipif(not NO_GPU, reason="auto is the CPU only on a machine without a GPU")
def test_cpu_and_auto_searches_agree_and_the_device_is_recorded(tmp_path):
    from hwnas.report.card import model_card
    from hwnas.report.status import status_text, study_status
    from hwnas.run import RunFolder, outcomes
    from hwnas.search import run_search

    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(DIGITS_SPACE.replace("max_steps: 60", "max_steps: 15")
                     + ENQUEUED.replace("n_trials: 5", "n_trials: 2"))
    device.write_text(FAST_DEVICE)
    found = {}
    for asked in ("cpu", "auto"):
        run_dir = tmp_path / f"run-{asked}"
        run_search(space, [device], run_dir, progress=False, log=lambda line: None,
                   torch_device=asked)
        run = RunFolder.load(run_dir)
        study = run.open_study()
        assert study.user_attrs["torch_device"] == "cpu"
        evaluated = [o for o in outcomes(study) if o.finetune is not None]
        assert evaluated and all(o.finetune.device == "cpu" for o in evaluated)
        assert model_card(run, study, evaluated[0])["torch_device"] == "cpu"
        assert "PyTorch on cpu" in status_text(study_status(str(run_dir)))
        # what PyTorch decides (latency is measured anew each run): accuracy, loss, bytes
        found[asked] = [(o.candidate, o.accuracy_val, o.accuracy_test, o.finetune.final_loss,
                         o.artifact.sha256) for o in evaluated]
    assert found["cpu"] == found["auto"] and len(found["cpu"]) >= 1
