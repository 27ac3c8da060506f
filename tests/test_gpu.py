"""GPU checks, skipped cleanly without CUDA: the engine's CUDA path (bf16 autocast,
channels_last, pinned loaders) learns what the CPU path learns.

Self-contained on purpose (no conftest fixtures), so it also runs on a GPU machine that
has torch but not the orchestration stack: ``pytest --noconftest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_engine_fine_tune_on_cuda_reaches_the_cpu_accuracy(tmp_path):
    from transferops.config import load_settings
    from transferops.data import scan_dataset
    from transferops.engine import evaluate_on_test, train_model
    from transferops.samples import write_shapes
    from transferops.sources import scratch_source
    from transferops.strategy import StrategyChoice, strategy_params

    images = scan_dataset(write_shapes(tmp_path / "shapes", per_class=80, classes=3, seed=0))
    accuracy = {}
    for device in ("cpu", "cuda"):
        s = load_settings(tmp_path / device)
        s.training.device, s.training.epochs, s.training.patience = device, 10, 10
        s.training.batch_size, s.training.lr = 16, 3e-3
        src = scratch_source(images, "resnet18", 32)
        choice = StrategyChoice("scratch", "GPU test", strategy_params("scratch", s))
        trained = train_model(s, src, choice, images, tmp_path / device / "ckpt.pt", progress=False)
        assert next(trained.model.parameters()).device.type == device
        if device == "cuda":  # the CUDA path is the fast one: NHWC weights under bf16 autocast
            conv = next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv2d))
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        accuracy[device] = evaluate_on_test(s, trained.model, src.weights, images)["accuracy"]
    print(f"held-out accuracy by device: {accuracy}")  # shown with -rA: the figure for the README
    # ~36 test images: one image is 0.03, so "within noise" is a few images either way
    assert min(accuracy.values()) > 0.75, accuracy
    assert abs(accuracy["cuda"] - accuracy["cpu"]) <= 0.15, f"bf16 on CUDA should match fp32 on CPU within noise: {accuracy}"
