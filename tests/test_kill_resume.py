"""A training process killed with SIGKILL in the middle of an epoch resumes from its last
checkpoint and ends bit-identical to an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

TRAIN = textwrap.dedent("""
    import sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transferops.models import build_model
    from transferops.training import fit, make_optimizer, plan_budget, seed_everything

    ckpt, out, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"
    seed_everything(0)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(48, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)
    model = build_model("resnet18", 2)

    def batch(i, n):
        print(f"batch {i}/{n}", flush=True)
        if slow:
            time.sleep(0.3)  # room for the kill to land mid-epoch

    res = fit(model, make_optimizer(model, 1e-3), train, val, num_classes=2, device=torch.device("cpu"),
              budget=plan_budget(32, 8, epochs=4, min_steps=0, eval_every_steps=1), patience=10,
              checkpoint_path=ckpt, checkpoint_interval_s=0, on_batch=batch,
              on_epoch_end=lambda row: print(f"epoch {row['epoch']} done", flush=True))
    torch.save({"state": model.state_dict(), "history": res.history, "resumed_from": res.resumed_from}, out)
""")


def _start(script: Path, ckpt: Path, out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.integration
def test_sigkill_mid_epoch_resumes_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    # killed in epoch 2 (0-based), after epoch 1's checkpoint
    proc = _start(script, tmp_path / "ckpt.pt", tmp_path / "killed.pt", "slow")
    seen, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "epoch 1 done" in "".join(seen) and line.startswith("batch 2/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {''.join(seen)[-500:]}"
    assert not (tmp_path / "killed.pt").exists() and (tmp_path / "ckpt.pt").is_file()
    # the flow's retry: the same command again
    again = _start(script, tmp_path / "ckpt.pt", tmp_path / "resumed.pt", "fast")
    assert again.wait(timeout=300) == 0, again.stderr.read()[-2000:]
    full = _start(script, tmp_path / "fresh.pt", tmp_path / "full.pt", "fast")
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]
    resumed, uninterrupted = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "full.pt")
    assert resumed["resumed_from"] == 1 and uninterrupted["resumed_from"] is None
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in uninterrupted["history"]]
    for name, a in resumed["state"].items():
        assert torch.equal(a, uninterrupted["state"][name]), f"{name} differs after the resume"
