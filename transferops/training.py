"""The training loop, in the shape of torchvision's references/classification/train.py.

``train_one_epoch`` and ``evaluate`` take everything as arguments and return
metric dicts; ``fit`` adds early stopping and a per-epoch checkpoint it can
resume from. Logging is the caller's job: pass ``on_epoch_end``.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from transferops.models import head_parameters, trainable_parameters


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; CPU runs are then bit-for-bit repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only: the head at ``lr``, the backbone at ``lr * backbone_lr_mult``.

    Frozen parameters never reach the optimizer, so freezing needs no special case.
    """
    head_ids = {id(p) for p in head_parameters(model)}
    params = trainable_parameters(model)
    head = [p for p in params if id(p) in head_ids]
    body = [p for p in params if id(p) not in head_ids]
    groups = [g for g in ({"params": head, "lr": lr, "name": "head"},
                          {"params": body, "lr": lr * backbone_lr_mult, "name": "backbone"}) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters; unfreeze something before training")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    # bf16 needs no loss scaling, so AMP here is just autocast.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader,
                    device: torch.device, epoch: int, *, amp: bool = False, channels_last: bool = False,
                    on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """One pass over ``data_loader``; returns mean loss, accuracy, images and seconds."""
    model.train()
    start = time.perf_counter()
    loss_sum, correct, n = 0.0, 0, 0
    for i, (images, targets) in enumerate(data_loader):
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            output = model(images)
            loss = criterion(output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = targets.shape[0]
        loss_sum += loss.item() * b
        correct += (output.argmax(1) == targets).sum().item()
        n += b
        if on_batch:
            on_batch(i + 1, len(data_loader))
    if n == 0:
        raise ValueError("the train loader yielded no images; the train split is empty")
    return {"epoch": epoch, "loss": loss_sum / n, "accuracy": correct / n, "images": n,
            "seconds": time.perf_counter() - start}


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: nn.Module, data_loader: DataLoader, device: torch.device, *,
             num_classes: int, amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
    """Loss, accuracy, macro F1 and the confusion matrix (rows: true, columns: predicted)."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, n = 0.0, 0
    for images, targets in data_loader:
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            output = model(images)
            loss = criterion(output, targets)
        loss_sum += loss.item() * targets.shape[0]
        n += targets.shape[0]
        pred = output.argmax(1)
        idx = (targets * num_classes + pred).cpu()
        confusion += torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)
    if n == 0:
        raise ValueError("the evaluation loader yielded no images; the split is empty")
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).clamp_min(1)
    recall = tp / confusion.sum(1).clamp_min(1)
    f1 = (2 * precision * recall / (precision + recall).clamp_min(1e-12))
    return {"loss": loss_sum / n, "accuracy": float(tp.sum() / n), "macro_f1": float(f1.mean()), "images": n,
            "confusion": confusion.tolist()}


@dataclass
class FitResult:
    """What ``fit`` leaves: per-epoch history, the best epoch and whether it stopped early."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_accuracy: float = -1.0
    stopped_early: bool = False
    resumed_from: int | None = None


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: DataLoader, val_loader: DataLoader, *,
        num_classes: int, device: torch.device, epochs: int, patience: int, amp: bool = False,
        channels_last: bool = False, checkpoint_path: Path | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_batch: Callable[[int, int], None] | None = None) -> FitResult:
    """Train with early stopping on validation accuracy; the model ends with its best weights.

    After every epoch the full state (model, optimizer, history, best weights, RNG)
    goes to ``checkpoint_path``; calling ``fit`` again with the same path resumes
    after the last finished epoch.
    """
    criterion = nn.CrossEntropyLoss()
    model.to(device)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    result = FitResult()
    best_state = None
    bad_epochs = 0
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        result = ckpt["result"]
        best_state, bad_epochs = ckpt["best_state"], ckpt["bad_epochs"]
        torch.set_rng_state(ckpt["rng"])
        train_loader.generator.set_state(ckpt["loader_rng"]) if train_loader.generator is not None else None
        start_epoch = ckpt["epoch"] + 1
        result.resumed_from = ckpt["epoch"]
    for epoch in range(start_epoch, epochs):
        if result.stopped_early:
            break
        train_m = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch,
                                  amp=amp, channels_last=channels_last, on_batch=on_batch)
        val_m = evaluate(model, criterion, val_loader, device, num_classes=num_classes, amp=amp, channels_last=channels_last)
        row = {"epoch": epoch, "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"],
               "val_loss": val_m["loss"], "val_accuracy": val_m["accuracy"], "val_macro_f1": val_m["macro_f1"],
               "seconds": train_m["seconds"], "images_per_second": train_m["images"] / max(train_m["seconds"], 1e-9)}
        result.history.append(row)
        if val_m["accuracy"] > result.best_accuracy:
            result.best_accuracy, result.best_epoch, bad_epochs = val_m["accuracy"], epoch, 0
            # a copy on CPU: the live tensors keep changing
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            result.stopped_early = bad_epochs >= patience
        if checkpoint_path is not None:
            _save_checkpoint(Path(checkpoint_path), {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "result": result,
                "best_state": best_state, "bad_epochs": bad_epochs, "rng": torch.get_rng_state(),
                "loader_rng": train_loader.generator.get_state() if train_loader.generator is not None else None})
        if on_epoch_end:
            on_epoch_end(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # write-then-rename: a crash mid-save never leaves a half-written checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def extract_embeddings(model: nn.Module, data_loader: DataLoader, device: torch.device,
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Backbone embeddings (the input of the final classifier layer) and softmax outputs."""
    from transferops.models import head_layer

    _, _, layer = head_layer(model)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].flatten(1).float().cpu()))
    probs: list[torch.Tensor] = []
    model.eval().to(device)
    n = 0
    try:
        for images, _ in data_loader:
            probs.append(torch.softmax(model(images.to(device)).float(), 1).cpu())
            n += images.shape[0]
            if limit is not None and n >= limit:
                break
    finally:
        hook.remove()
    emb = torch.cat(captured)[:limit].numpy() if captured else np.zeros((0, 0), np.float32)
    return emb, (torch.cat(probs)[:limit].numpy() if probs else np.zeros((0, 0), np.float32))
