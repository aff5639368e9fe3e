"""Output fidelity: the arithmetic, and the session it runs on."""

import numpy as np
import pytest

from hwnas.evaluate import CONTROLLER_CPU, DeviceSession, compare_outputs, output_fidelity
from hwnas.records import Artifact, OutputFidelity


def test_cosine_and_top1_agreement_per_sample():
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    candidate = np.array([[2.0, 0.0, 0.0], [0.0, -2.0, 0.0], [1.0, 1.0, 1e-9], [0.0, 0.0, 0.0]])
    fidelity = compare_outputs(reference, candidate)
    # same direction, opposite direction, same, both all-zero (they agree)
    assert fidelity.cosine_mean == pytest.approx((1 - 1 + 1 + 1) / 4)
    assert fidelity.cosine_min == pytest.approx(-1.0)
    assert fidelity.top1_agreement == pytest.approx(3 / 4)  # sample 1: argmax 1 vs 0
    assert fidelity.samples == 4 and fidelity.runtime == CONTROLLER_CPU


def test_fidelity_round_trips_as_a_record():
    fidelity = OutputFidelity(0.9991, 0.97, 0.99, 256, "QNNExecutionProvider on the controller (simulated)",
                        True)
    assert OutputFidelity.from_dict(fidelity.to_dict()) == fidelity
    assert "top-1 agreement 99.0%" in fidelity.summary()


def test_identical_bytes_are_identical_on_the_cpu(tmp_path):
    from hwnas.remote.check import precision_probe_model

    import onnx

    path = tmp_path / "probe.onnx"
    onnx.save(precision_probe_model(), str(path))
    artifact = Artifact.from_file(path, {}, 0)
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    fidelity = output_fidelity(artifact, artifact, x)
    assert fidelity.cosine_min == pytest.approx(1.0) and fidelity.top1_agreement == 1.0


def test_a_device_whose_providers_are_missing_here_is_named(tmp_path):
    from pathlib import Path

    import onnx

    from hwnas.config import load_device_profile
    from hwnas.remote.check import precision_probe_model

    path = tmp_path / "probe.onnx"
    onnx.save(precision_probe_model(), str(path))
    repo = Path(__file__).resolve().parent.parent
    session = DeviceSession(path, load_device_profile(repo / "device_profiles" / "jetson-orin-nano.yaml"))
    assert session.runtime.startswith(CONTROLLER_CPU) and "native TensorRT" in session.runtime
    assert not session.emulated
