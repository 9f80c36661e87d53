"""arithmetic.pin_gpu, as every Worker calls it: a GPU computes float32 products in IEEE float32,
unless EVOARENA_TF32 lets it use TF32. torch's precision settings are plain settings: a CPU-only
torch takes and reads them too."""

from __future__ import annotations

import pytest
import torch

from evoarena.worker.worker import Worker, WorkerConfig

SETTINGS = {"cuda.matmul": torch.backends.cuda.matmul, "cudnn.conv": torch.backends.cudnn.conv,
            "cudnn.rnn": torch.backends.cudnn.rnn}


@pytest.fixture(autouse=True)
def torch_precision_restored():
    """torch's precision settings are process-wide: each test leaves them as it found them."""
    before = {name: setting.fp32_precision for name, setting in SETTINGS.items()}
    yield
    for name, setting in SETTINGS.items():
        setting.fp32_precision = before[name]


def precisions() -> dict[str, str]:
    return {name: setting.fp32_precision for name, setting in SETTINGS.items()}


def a_worker(tmp_path) -> Worker:
    return Worker(WorkerConfig(f"sqlite:///{tmp_path / 'runs.db'}", str(tmp_path / "artifacts"), str(tmp_path / "noise")))


def test_a_worker_computes_float32_products_as_ieee_float32(tmp_path, monkeypatch):
    monkeypatch.delenv("EVOARENA_TF32", raising=False)
    for setting in SETTINGS.values():  # as TF32 would leave them: the worker must change them
        setting.fp32_precision = "tf32"
    a_worker(tmp_path)
    assert precisions() == {"cuda.matmul": "ieee", "cudnn.conv": "ieee", "cudnn.rnn": "ieee"}


def test_evoarena_tf32_lets_a_worker_compute_in_tf32(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_TF32", "1")
    a_worker(tmp_path)
    assert precisions() == {"cuda.matmul": "tf32", "cudnn.conv": "tf32", "cudnn.rnn": "tf32"}


def test_a_worker_refuses_an_evoarena_tf32_that_is_not_a_boolean(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOARENA_TF32", "fast")
    with pytest.raises(ValueError, match="EVOARENA_TF32='fast'"):
        a_worker(tmp_path)
