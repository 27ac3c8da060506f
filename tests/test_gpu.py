"""GPU checks, skipped cleanly without CUDA: the engine's CUDA path (bf16 autocast,
channels_last, pinned loaders) learns what the CPU path learns.

Self-contained on purpose (no conftest fixtures), so it also runs on a GPU machine that
has torch but not the orchestration stack: ``pytest --noconftest tests/test_gpu.py``.
"""

from __future__ import annotations

import numpy as np
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


def test_compiled_bf16_fit_keeps_plain_weights_and_resumes(tmp_path):
    """torch.compile wraps the network for speed only: the optimizer, the kept best weights and
    the checkpoint are the plain module's, so a second fit resumes from the checkpoint."""
    from torch.utils.data import DataLoader, TensorDataset

    from transferops.models import build_model
    from transferops.training import fit, make_optimizer, plan_budget, seed_everything

    seed_everything(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16)
    model = build_model("resnet18", 2)
    budget = plan_budget(48, 16, epochs=3, min_steps=0, eval_every_steps=1)
    ckpt = tmp_path / "ckpt.pt"
    res = fit(model, make_optimizer(model, 1e-3), train, val, num_classes=2, device=torch.device("cuda"), budget=budget,
              patience=5, amp=True, channels_last=True, compile=True, checkpoint_path=ckpt, checkpoint_interval_s=0)
    assert len(res.history) == 3 and all(h["train_loss"] == h["train_loss"] for h in res.history)  # no NaN
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    assert not any(k.startswith("_orig_mod") for k in torch.load(ckpt, weights_only=False)["model"])
    again = fit(model, make_optimizer(model, 1e-3), train, val, num_classes=2, device=torch.device("cuda"), budget=budget,
                patience=5, amp=True, channels_last=True, compile=True, checkpoint_path=ckpt, checkpoint_interval_s=0)
    assert again.resumed_from == 2


def test_bf16_channels_last_features_match_fp32():
    """The engine's feature extraction under bf16 autocast and NHWC reads what fp32 reads."""
    from torch.utils.data import DataLoader, TensorDataset

    from transferops.features import extract_features
    from transferops.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    loader = DataLoader(TensorDataset(torch.randn(64, 3, 64, 64), torch.zeros(64, dtype=torch.long)), batch_size=32)
    cuda = torch.device("cuda")
    fp32 = extract_features(model, loader, cuda).head
    fast = extract_features(model, loader, cuda, amp=True, channels_last=True).head
    cos = (fp32 * fast).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(fast, axis=1))
    assert fast.dtype == np.float32 and cos.min() > 0.99, cos.min()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_under_torchrun_with_nccl_learn_what_one_learns(tmp_path):
    """training.nproc_per_node: auto takes every GPU: DDP over NCCL, the same budget and accuracy within noise."""
    from transferops.config import load_settings
    from transferops.data import scan_dataset
    from transferops.engine import evaluate_on_test, train_model
    from transferops.samples import write_shapes
    from transferops.sources import scratch_source
    from transferops.strategy import StrategyChoice, strategy_params

    images = scan_dataset(write_shapes(tmp_path / "shapes", per_class=80, classes=3, seed=0))
    accuracy, steps = {}, {}
    for nproc in (1, "auto"):
        s = load_settings(tmp_path / str(nproc))
        s.training.device, s.training.epochs, s.training.patience, s.training.nproc_per_node = "cuda", 10, 10, nproc
        s.training.batch_size, s.training.lr = 16, 3e-3
        src = scratch_source(images, "resnet18", 32)
        choice = StrategyChoice("scratch", "GPU test", strategy_params("scratch", s))
        trained = train_model(s, src, choice, images, tmp_path / str(nproc) / "ckpt.pt", progress=False)
        steps[nproc] = trained.fit.steps
        accuracy[s.training.processes()] = evaluate_on_test(s, trained.model, src.weights, images)["accuracy"]
    print(f"held-out accuracy by process count: {accuracy}")
    assert steps[1] == steps["auto"] and len(accuracy) == 2
    assert min(accuracy.values()) > 0.75 and max(accuracy.values()) - min(accuracy.values()) <= 0.15, accuracy
