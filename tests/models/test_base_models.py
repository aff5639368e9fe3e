"""Base models as engineers bring them: torchvision by name, factories, weights files, training;
user code that fails is one clear error, exit code 2 from the CLI, no traceback."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hwnas.config.models import BaseModelSpec, DatasetSpec
from hwnas.data import load_task
from hwnas.errors import ConfigError
from hwnas.models.build import build_model
from hwnas.train import load_base_model, resolve_stages, torch_accuracy
from tests.conftest import FAST_DEVICE

HWNAS = str(Path(sys.executable).parent / "hwnas")
USER_MODULE = '''
import torch
from torch import nn

from hwnas.data.digits import load_digits_task


class Net(nn.Module):
    def __init__(self, channels=1, num_classes=10, width=16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def build():
    return Net()


def build_for(num_classes, input_shape, width=16):
    return Net(input_shape[0], num_classes, width)


def broken():
    return Net(width=int("sixteen"))


def not_a_model():
    return {"layers": 3}


def data(spec):
    return load_digits_task(spec)


def broken_data(spec):
    raise RuntimeError("the data share is not mounted")
'''


@pytest.fixture()
def user(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    (tmp_path / "usersyntax.py").write_text("def build(:\n    pass\n")
    (tmp_path / "userdeps.py").write_text("import torchaudio_not_installed\n\ndef build():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("usernet", "usersyntax", "userdeps"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def digits():
    return load_task(DatasetSpec(builtin="digits"))


def spec(**fields):
    return BaseModelSpec.model_validate(fields)


def test_factory_gets_num_classes_and_input_shape(user, digits):
    model = build_model(spec(factory="usernet:build_for", kwargs={"width": 24}), (3, 8, 8), 7)
    assert model.features[0].in_channels == 3 and model.features[0].out_channels == 24
    assert model.head.out_features == 7
    assert isinstance(build_model(spec(factory="usernet:build"), (1, 8, 8), 10), nn.Module)


def test_factory_without_weights_or_training_is_refused(user, digits):
    with pytest.raises(ConfigError, match="no weights and no training.*base_model.train"):
        load_base_model(spec(factory="usernet:build"), digits, log=lambda _: None)


def test_factory_trained_here_and_cached_by_content(user, digits):
    wanted = spec(factory="usernet:build_for", train={"epochs": 3, "batch_size": 64,
                                                      "learning_rate": 0.01})
    first = load_base_model(wanted, digits, log=lambda _: None)
    untrained = torch_accuracy(build_model(wanted, (1, 8, 8), 10), digits.test)
    assert not first.cached and first.test_accuracy > untrained + 0.1
    again = load_base_model(wanted, digits, log=lambda _: None)
    assert again.cached and again.key == first.key
    wider = load_base_model(spec(factory="usernet:build_for", kwargs={"width": 32},
                                 train=wanted.train.model_dump()), digits, log=lambda _: None)
    assert wider.key != first.key and not wider.cached


@pytest.mark.parametrize("factory, words", [
    ("usernet:broken", ["base_model.factory", "usernet:broken raised", "usernet.py:"]),
    ("usernet:not_a_model", ["returned dict, not a torch.nn.Module"]),
    ("usersyntax:build", ["importing usersyntax failed with SyntaxError", "usersyntax.py:1"]),
    ("userdeps:build", ["needs the module 'torchaudio_not_installed', which is not installed"]),
    ("nosuchpkg.models:build", ["no module named 'nosuchpkg'", "PYTHONPATH"]),
    ("usernet:missing", ["usernet has no callable 'missing'"]),
])
def test_failing_factories_are_one_clear_error(user, factory, words):
    with pytest.raises(ConfigError) as caught:
        build_model(spec(factory=factory), (1, 8, 8), 10)
    for word in words:
        assert word in str(caught.value)


def test_a_factory_module_in_the_current_folder_is_found(tmp_path, monkeypatch):
    # a console script (hwnas) does not put the current folder on sys.path as `python -m` does
    (tmp_path / "herenet.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        model = build_model(spec(factory="herenet:build"), (1, 8, 8), 10)
        assert isinstance(model, nn.Module)
        assert sys.path[-1] == str(tmp_path)  # last: it never shadows an installed package
        with pytest.raises(ConfigError, match=r"no module named 'nothere' .*current folder"):
            build_model(spec(factory="nothere:build"), (1, 8, 8), 10)
    finally:
        sys.modules.pop("herenet", None)


def test_weights_files_that_do_not_fit_say_why(user, digits, tmp_path):
    import usernet

    pickled = tmp_path / "whole.pt"
    torch.save(usernet.build(), pickled)  # a whole pickled model, not a state_dict
    with pytest.raises(ConfigError) as caught:
        load_base_model(spec(factory="usernet:build", weights=str(pickled)), digits)
    assert "tensors only" in str(caught.value) and "state_dict()" in str(caught.value)
    assert "weights_only=False" not in str(caught.value)  # never advise running the file's code

    other = tmp_path / "other.pt"
    torch.save(usernet.Net(width=8).state_dict(), other)
    with pytest.raises(ConfigError, match=r"does not fit.*shape mismatch: features\.0\.weight "
                                          r"\(file \[8, 1, 3, 3\], model \[16, 1, 3, 3\]\)"):
        load_base_model(spec(factory="usernet:build", weights=str(other)), digits)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="not a PyTorch weights file"):
        load_base_model(spec(factory="usernet:build", weights=str(garbage)), digits)

    nested = tmp_path / "checkpoint.pt"  # as training scripts save them, from DataParallel
    state = {f"module.{k}": v for k, v in usernet.build().state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, nested)
    base = load_base_model(spec(factory="usernet:build", weights=str(nested)), digits)
    assert len(base.key) == 64


def test_torchvision_model_by_name_adapts_to_the_data(digits):
    model = build_model(spec(torchvision="resnet18", train={}), (1, 32, 32), 10, log=lambda _: None)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    stages = resolve_stages(model, spec(torchvision="resnet18", train={}), (1, 32, 32))
    # the stem feeds layer1's identity residual: one set of channels, one stage
    assert stages == {"conv1-layer1": ("conv1", "layer1"), "layer2": ("layer2",),
                      "layer3": ("layer3",), "layer4": ("layer4",)}
    mobilenet = build_model(spec(torchvision="mobilenet_v2", kwargs={"width_mult": 0.5}, train={}),
                            (3, 64, 64), 10)
    assert list(resolve_stages(mobilenet, spec(torchvision="mobilenet_v2", train={}), (3, 64, 64))) \
        == ["features.0-1", "features.2-3", "features.4-6", "features.7-13", "features.14-18"]


@pytest.mark.parametrize("fields, words", [
    ({"torchvision": "resnet81", "train": {}}, ["not a torchvision classification model",
                                                "did you mean resnet18"]),
    ({"torchvision": "resnet18", "kwargs": {"weights": "DEFAULT"}, "train": {}},
     ["never downloads weights", "base_model.weights"]),
    ({"torchvision": "mobilenet_v2", "kwargs": {"width": 2}, "train": {}},
     ["mobilenet_v2", "unexpected keyword argument 'width'"]),
    ({"torchvision": "resnet18", "kwargs": {"num_classes": 5}, "train": {}},
     ["num_classes is 5 but the data set has 10"]),
])
def test_torchvision_mistakes_are_named(fields, words):
    with pytest.raises(ConfigError) as caught:
        build_model(spec(**fields), (3, 32, 32), 10)
    for word in words:
        assert word in str(caught.value)


def cli_search(space_text, tmp_path, user_dir):
    space, device = tmp_path / "space.yaml", tmp_path / "device.yaml"
    space.write_text(textwrap.dedent(space_text))
    device.write_text(FAST_DEVICE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([HWNAS, "search", str(space), "--device", str(device), "--run-dir",
                           str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.parametrize("base, dataset, words", [
    ("{factory: 'usernet:broken', train: {epochs: 1}}", "{builtin: digits}",
     ["base_model.factory: usernet:broken raised"]),
    ("{factory: 'usersyntax:build', train: {epochs: 1}}", "{builtin: digits}",
     ["importing usersyntax failed with SyntaxError"]),
    ("{factory: 'usernet:build'}", "{entry_point: 'usernet:broken_data'}",
     ["dataset.entry_point: usernet:broken_data raised RuntimeError: the data share is not mounted"]),
    ("{factory: 'usernet:build', weights: WHOLE}", "{builtin: digits}",
     ["holds Python objects besides tensors"]),
    ("{factory: 'usernet:build'}", "{builtin: digits}", ["no weights and no training"]),
])
def test_cli_exits_2_with_one_message(user, tmp_path, base, dataset, words):
    import usernet

    whole = tmp_path / "whole.pt"
    torch.save(usernet.build(), whole)
    done = cli_search(f"""\
        name: user
        base_model: {base.replace("WHOLE", str(whole))}
        dataset: {dataset}
        """, tmp_path, user)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("hwnas: error: ")]
    assert len(errors) == 1 and errors[0] == done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in done.stderr
    assert "weights_only=False" not in done.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "search_spaces")
                                        .glob("*.yaml")), ids=lambda p: p.name)
def test_example_search_spaces_are_valid(path):
    import yaml

    from hwnas.config import load_search_space
    from hwnas.bench.cells import load_cell_space

    # a cell space (NAS-Bench-201 for the replay benchmark) has its own schema
    cells = "edges" in (yaml.safe_load(path.read_text()) or {})
    assert (load_cell_space(path) if cells else load_search_space(path)).name


def test_a_missing_factory_module_names_the_search_space_file(tmp_path, monkeypatch):
    from hwnas.search import prepare
    from tests.conftest import DIGITS_SPACE

    monkeypatch.chdir(tmp_path)
    space, device = tmp_path / "myspace.yaml", tmp_path / "device.yaml"
    space.write_text(DIGITS_SPACE.replace("builtin: small_cnn", "factory: nothere:build"))
    device.write_text(FAST_DEVICE)
    with pytest.raises(ConfigError) as caught:
        prepare(space, device, log=lambda _: None)
    assert str(caught.value).startswith(f"{space}: base_model.factory: no module named 'nothere'")
