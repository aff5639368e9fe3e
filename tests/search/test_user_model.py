"""A user's own model factory, weights and data set, named as entry points in the YAML."""

import sys
import textwrap

import torch
from optuna.trial import TrialState

from hwnas.run import RunFolder
from hwnas.search import run_search
from tests.conftest import FAST_DEVICE

USER_MODULE = '''
import torch
from torch import nn

from hwnas.data.digits import load_digits_task


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.features(x))


def build():
    return Net()


def data(spec):
    return load_digits_task(spec)
'''


def test_search_with_user_factory_weights_and_dataset(tmp_path, monkeypatch):
    (tmp_path / "userpkg.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import userpkg

    weights = tmp_path / "net.pt"
    torch.manual_seed(0)
    torch.save(userpkg.build().state_dict(), weights)
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent(f"""\
        name: user-net
        base_model:
          factory: userpkg:build
          weights: {weights}
          stages: {{early: [features.0], late: [features.3]}}
        dataset: {{entry_point: "userpkg:data"}}
        knobs:
          width: {{keep_ratios: [0.5, 1.0]}}
          pruning: null
          precision: {{granularity: layer}}
        finetune: {{max_steps: 5}}
        search: {{n_trials: 2, sampler: random}}
        """))
    device = tmp_path / "device.yaml"
    device.write_text(FAST_DEVICE)
    outcome = run_search(space, device, tmp_path / "run", progress=False, log=lambda _: None)
    study = RunFolder.load(tmp_path / "run").open_study()
    assert outcome.trials_run == 2
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    params = trials[0].params
    assert set(params) == {"keep_early", "keep_late", "precision_features.0",
                           "precision_features.3", "precision_head"}
    channels = trials[0].user_attrs["artifact"]["channels"]
    assert channels["features.0"] == (24 if params["keep_early"] == 1.0 else 16)  # 12 -> 16 (x8)
    assert channels["head"] == 10
    assert study.user_attrs["base_model"]["key"] != "untrained"
    del sys.modules["userpkg"]
