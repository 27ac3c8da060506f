"""The training loop, in the shape of torchvision's references/classification/train.py.

``train_one_epoch`` and ``evaluate`` take everything as arguments and return
metric dicts; ``fit`` runs a step budget (:func:`plan_budget`) with a warm-up + cosine
schedule, early stopping on the smoothed validation loss and a checkpoint it can resume
from. Logging is the caller's job: pass ``on_epoch_end``.

With ``distributed=True`` (a process group set up by :mod:`transferops.distributed` under
torchrun) the same functions train one DistributedDataParallel replica: sums are reduced
over the ranks, so every rank sees the same metrics and takes the same early-stopping and
checkpoint decisions, and only rank 0 writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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


def make_optimizer(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0, *,
                   layer_decay: float = 1.0, backbone_weight_decay: float | None = None) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only, one group per backbone block.

    The head trains at ``lr``; backbone block ``i`` of ``n`` at
    ``lr * backbone_lr_mult * layer_decay ** (n - 1 - i)``: discriminative learning rates
    (ULMFiT's, BEiT's layer decay), since early blocks hold generic features that need
    smaller steps than late, source-specific ones. ``backbone_weight_decay`` overrides the
    decay of backbone weights (0 when L2-SP pulls them towards the source instead of to 0).
    Frozen parameters never reach the optimizer, so freezing needs no special case.
    The update is PyTorch's fused AdamW kernel on CPU and CUDA: the same arithmetic as the
    default per-tensor loop, in one pass over each tensor (a resnet18 step on 2 CPU cores:
    11 ms against 32-59 ms).
    """
    from transferops.models import _loose_parameters, backbone_blocks

    head_ids = {id(p) for p in head_parameters(model)}
    blocks = backbone_blocks(model)
    body_wd = weight_decay if backbone_weight_decay is None else backbone_weight_decay
    groups = [{"params": [p for p in head_parameters(model) if p.requires_grad], "lr": lr, "weight_decay": weight_decay,
               "name": "head"}]
    seen = set(head_ids)
    for i, (name, block) in enumerate(blocks):
        params = [p for p in block.parameters() if p.requires_grad and id(p) not in seen]
        if i == 0:  # class tokens and position embeddings move with the first block
            params += [p for p in _loose_parameters(model, blocks) if p.requires_grad]
        seen |= {id(p) for p in params}
        rate = lr * backbone_lr_mult * layer_decay ** (len(blocks) - 1 - i)
        groups.append({"params": params, "lr": rate, "weight_decay": body_wd, "name": f"backbone.{name}"})
    rest = [p for p in trainable_parameters(model) if id(p) not in seen]  # anything the block walk missed
    groups.append({"params": rest, "lr": lr * backbone_lr_mult, "weight_decay": body_wd, "name": "backbone.other"})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters; unfreeze something before training")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)


def l2_sp(model: nn.Module, strength: float) -> Callable[[], torch.Tensor]:
    """The L2-SP penalty (Li et al., ICML 2018): ``strength / 2 * ||w - w_source||^2`` over the
    trainable backbone weights, so fine-tuning stays near the source instead of near zero."""
    head_ids = {id(p) for p in head_parameters(model)}
    pairs = [(p, p.detach().clone()) for p in trainable_parameters(model) if id(p) not in head_ids]

    def penalty() -> torch.Tensor:
        total = sum(((p - p0.to(p.device)) ** 2).sum() for p, p0 in pairs)
        return 0.5 * strength * total  # type: ignore[return-value]

    return penalty


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    # bf16 needs no loss scaling, so AMP here is just autocast.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool,
               batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if batch_transform is not None:  # the rest of the preprocessing, on the device (uint8 crossed the bus)
        x = batch_transform(x)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = False, compile: bool = False,
                  cudnn_benchmark: bool = True, distributed: bool = False) -> nn.Module:
    """Move ``model`` to ``device`` and return the module to call for training and evaluation.

    On CUDA: weights in ``channels_last`` (NHWC, what tensor-core convolutions read),
    ``cudnn.benchmark`` (one timing pass per input shape, then the fastest kernels), and
    ``torch.compile`` (fused kernels; the compiled wrapper shares ``model``'s parameters, so
    optimizers, checkpoints and state dicts keep using ``model``). On CPU the model is
    returned as it is: compiling there needs a C++ toolchain and rarely pays for small runs.
    ``distributed`` wraps it in DistributedDataParallel (before compiling, as PyTorch advises),
    which averages the gradients over the ranks in the backward pass.
    """
    model.to(device)
    net = model
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if channels_last:
            model.to(memory_format=torch.channels_last)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if compile and device.type == "cuda" else net


def _all_reduce(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum each tensor over the ranks (one collective for all of them); float64, on their device."""
    import torch.distributed as dist

    flat = torch.cat([v.detach().double().reshape(-1) for v in values])
    dist.all_reduce(flat)
    out, i = [], 0
    for v in values:
        out.append(flat[i:i + v.numel()].reshape(v.shape))
        i += v.numel()
    return out


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader,
                    device: torch.device, epoch: int, *, amp: bool = False, channels_last: bool = False,
                    on_batch: Callable[[int, int], None] | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    penalty: Callable[[], torch.Tensor] | None = None, distributed: bool = False,
                    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """One pass over ``data_loader``; returns mean loss, accuracy, images, steps and seconds.

    ``scheduler`` steps after every optimizer step; ``penalty`` is added to the loss. The loss
    and the hits are summed on the device and read once, at the end: a ``.item()`` per step
    would make the host wait for the device after every batch. ``distributed``: the figures
    are those of all ranks together. ``batch_transform`` finishes each batch's preprocessing
    on the device (:func:`transferops.loading.device_preprocessing`).
    """
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for i, (images, targets) in enumerate(data_loader):
        images = _to_device(images, device, channels_last, batch_transform)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            output = model(images)
            loss = criterion(output, targets)
        optimizer.zero_grad(set_to_none=True)
        (loss + penalty() if penalty is not None else loss).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        b = targets.shape[0]
        loss_sum += loss.detach().float() * b
        correct += (output.detach().argmax(1) == targets).sum()
        n += b
        if on_batch:
            on_batch(i + 1, len(data_loader))
    if n == 0:
        raise ValueError("the train loader yielded no images; the train split is empty")
    if distributed:
        loss_sum, correct, total = _all_reduce(loss_sum, correct, torch.tensor(float(n), device=device))
        n = int(total)
    loss_total, hits = float(loss_sum), int(correct)  # the epoch's one synchronisation
    return {"epoch": epoch, "loss": loss_total / n, "accuracy": hits / n, "images": n, "steps": len(data_loader),
            "seconds": time.perf_counter() - start}


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: nn.Module, data_loader: DataLoader, device: torch.device, *,
             num_classes: int, amp: bool = False, channels_last: bool = False,
             classes: Sequence[str] | None = None, distributed: bool = False,
             batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Loss, accuracy, macro F1, per-class recall, expected calibration error (:func:`expected_calibration_error`)
    and the confusion matrix (rows: true, columns: predicted).

    ``distributed``: each rank evaluates its shard (``make_loader(shard=...)``) and the
    figures are those of the whole split, the same on every rank.

    ``per_class_recall`` maps each class (its name in ``classes``, else its index as a string)
    to its recall, or None when the split has no image of it.
    """
    model.eval()
    # everything accumulates on the device and comes to the host once, after the last batch
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    confidence: list[torch.Tensor] = []  # top softmax probability per image
    hits: list[torch.Tensor] = []  # whether that top class was right
    loss_sum, n = torch.zeros((), device=device), 0
    for images, targets in data_loader:
        images = _to_device(images, device, channels_last, batch_transform)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            output = model(images)
            loss = criterion(output, targets)
        loss_sum += loss.float() * targets.shape[0]
        n += targets.shape[0]
        pred = output.argmax(1)
        confidence.append(torch.softmax(output.float(), 1).amax(1))
        hits.append(pred == targets)
        confusion += torch.bincount(targets * num_classes + pred, minlength=num_classes**2)
    conf = torch.cat(confidence).cpu().numpy() if confidence else np.zeros(0, np.float32)
    right = torch.cat(hits).cpu().numpy() if hits else np.zeros(0, bool)
    if distributed:
        import torch.distributed as dist

        loss_sum, confusion, total = _all_reduce(loss_sum, confusion, torch.tensor(float(n), device=device))
        confusion, n = confusion.long(), int(total)
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (conf, right))
        conf, right = np.concatenate([c for c, _ in parts]), np.concatenate([r for _, r in parts])
    if n == 0:
        raise ValueError("the evaluation loader yielded no images; the split is empty")
    confusion = confusion.cpu().reshape(num_classes, num_classes)
    tp = confusion.diag().double()
    support = confusion.sum(1)
    precision = tp / confusion.sum(0).clamp_min(1)
    recall = tp / support.clamp_min(1)
    f1 = (2 * precision * recall / (precision + recall).clamp_min(1e-12))
    names = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
    return {"loss": float(loss_sum) / n, "accuracy": float(tp.sum() / n), "macro_f1": float(f1.mean()), "images": n,
            "ece": expected_calibration_error(conf, right),
            "per_class_recall": {c: float(r) if s else None for c, r, s in zip(names, recall.tolist(), support.tolist(), strict=True)},
            "confusion": confusion.tolist()}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: how far the model's confidence is from its accuracy.

    The standard definition (Naeini et al., AAAI 2015; Guo et al., ICML 2017, with their 15
    bins): each image's confidence is its top softmax probability; images fall into
    ``n_bins`` equal-width bins (i/n, (i+1)/n] of it (the first also takes 0), and
    ECE = sum over bins of (share of images in the bin) x |accuracy in the bin - mean
    confidence in the bin|. 0 is perfectly calibrated; empty bins add nothing.

    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0])), 4)
    0.1
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, hit, n_bins) - np.bincount(bins, conf, n_bins))  # per bin: n x |acc - conf|
    return float(gap.sum() / max(count.sum(), 1))


@dataclass(frozen=True)
class Budget:
    """How long a training phase runs, in optimizer steps, and how often it is judged.

    Counting epochs alone starves small datasets: 85 images at batch 64 are two steps an
    epoch, so eight epochs are sixteen steps, far too few for a new head to converge. A
    phase therefore runs ``max(epochs * steps_per_epoch, min_steps)`` steps, rounded up to
    whole epochs, and is evaluated every ``eval_every`` epochs (about every
    ``eval_every_steps`` steps), so a tiny dataset is not judged after every two steps.
    """

    steps_per_epoch: int
    epochs: int
    eval_every: int  # epochs between evaluations
    min_steps: int  # early stopping never fires before half of this

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def as_dict(self) -> dict[str, int]:
        return {"steps": self.steps, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
                "eval_every_epochs": self.eval_every, "min_steps": self.min_steps}


def plan_budget(n_train: int, batch_size: int, *, epochs: int, min_steps: int, eval_every_steps: int = 20) -> Budget:
    """The step budget of one phase for ``n_train`` images (see :class:`Budget`).

    >>> plan_budget(85, 64, epochs=8, min_steps=300).as_dict()["steps"]
    300
    >>> plan_budget(5000, 64, epochs=8, min_steps=300).epochs
    8
    """
    spe = max(1, math.ceil(n_train / max(batch_size, 1)))
    total_epochs = max(epochs, math.ceil(min_steps / spe))
    return Budget(spe, total_epochs, max(1, round(eval_every_steps / spe)), min_steps)


def small_batch(n_train: int, batch_size: int, min_steps_per_epoch: int = 4, floor: int = 8) -> int:
    """The batch size for ``n_train`` images: at most ``batch_size``, small enough for
    ``min_steps_per_epoch`` steps an epoch (85 images give batches of 22, not one of 64
    and one of 21), never under ``floor`` so BatchNorm still sees a batch."""
    batch = max(min(batch_size, math.ceil(n_train / min_steps_per_epoch)), min(floor, batch_size))
    # a last batch of one image fails BatchNorm in training mode ("more than 1 value per channel")
    return batch + 1 if n_train % batch == 1 and n_train > 1 else batch


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine decay to zero (the
    torchvision references' ``lr_warmup`` + ``cosineannealinglr``), per optimizer step."""
    warm = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class FitResult:
    """What ``fit`` leaves: per-evaluation history, the best evaluation and why it stopped."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_accuracy: float = -1.0  # val accuracy of the kept weights
    best_loss: float = math.inf  # smoothed val loss of the kept weights
    stopped_early: bool = False
    resumed_from: int | None = None
    steps: int = 0
    budget: dict[str, int] | None = None  # the plan it ran under (Budget.as_dict() and the batch size)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: DataLoader, val_loader: DataLoader, *,
        num_classes: int, device: torch.device, budget: Budget, patience: int, smoothing: float = 0.6,
        warmup_fraction: float = 0.05, amp: bool = False, channels_last: bool = False, compile: bool = False,
        cudnn_benchmark: bool = True, penalty: Callable[[], torch.Tensor] | None = None, phase: str = "train", step_offset: int = 0,
        checkpoint_path: Path | None = None, checkpoint_interval_s: float = 30.0,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_batch: Callable[[int, int], None] | None = None, distributed: bool = False,
        batch_transforms: tuple[Callable | None, Callable | None] = (None, None)) -> FitResult:
    """Train for ``budget`` with a warm-up + cosine schedule; the model ends with its best weights.

    Early stopping and the choice of the kept weights read the validation *loss*,
    smoothed over evaluations (an exponential moving average with factor ``smoothing``):
    with 15 validation images accuracy moves in steps of 7 points and stops a run at
    random, while the loss is continuous. Training stops after ``patience`` evaluations
    without a better smoothed loss, never before half of ``budget.min_steps``.

    ``amp``, ``channels_last``, ``compile`` and ``cudnn_benchmark`` apply on CUDA only (see
    :func:`prepare_model`). ``penalty`` (e.g. L2-SP) is added to every step's loss. The full state goes to
    ``checkpoint_path`` at an evaluation at most every ``checkpoint_interval_s`` seconds
    (and at the last one); calling ``fit`` again with the same path resumes after it.

    ``distributed``: this process is one rank of an initialised process group and the loaders
    hold its shards (``make_loader(shard=...)``); the model trains as a DistributedDataParallel
    replica, rank 0 writes the checkpoint (with every rank's random state), and every rank
    resumes from it. Callbacks run where they are passed: pass them on rank 0 only.
    ``batch_transforms``: the device-side ends of the train and validation loaders' preprocessing.
    """
    criterion = nn.CrossEntropyLoss()
    rank = torch.distributed.get_rank() if distributed else 0
    net = prepare_model(model, device, channels_last=channels_last, compile=compile, cudnn_benchmark=cudnn_benchmark,
                        distributed=distributed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(budget.steps, warmup_fraction))
    result = FitResult()
    best_state, bad_evals, smoothed, start_epoch = None, 0, None, 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        result, best_state, bad_evals, smoothed = ckpt["result"], ckpt["best_state"], ckpt["bad_evals"], ckpt["smoothed"]
        # a list: one state per rank of the run that wrote it (a resume with fewer ranks takes rank 0's)
        rng = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        if train_loader.generator is not None:
            train_loader.generator.set_state(ckpt["loader_rng"])
        start_epoch = ckpt["epoch"] + 1
        result.resumed_from = ckpt["epoch"]
    last_save = time.monotonic()
    for epoch in range(start_epoch, budget.epochs):
        if result.stopped_early:
            break
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: a new order each epoch, the same on every rank
            train_loader.sampler.set_epoch(epoch)
        train_m = train_one_epoch(net, criterion, optimizer, train_loader, device, epoch, amp=amp,
                                  channels_last=channels_last, on_batch=on_batch, scheduler=scheduler, penalty=penalty,
                                  distributed=distributed, batch_transform=batch_transforms[0])
        result.steps += train_m["steps"]
        last = epoch == budget.epochs - 1
        if (epoch + 1) % budget.eval_every and not last:
            continue
        val_m = evaluate(net, criterion, val_loader, device, num_classes=num_classes, amp=amp, channels_last=channels_last,
                         distributed=distributed, batch_transform=batch_transforms[1])
        smoothed = val_m["loss"] if smoothed is None else smoothing * smoothed + (1 - smoothing) * val_m["loss"]
        row = {"epoch": epoch, "step": step_offset + result.steps, "phase": phase, "train_loss": train_m["loss"],
               "train_accuracy": train_m["accuracy"], "val_loss": val_m["loss"], "val_loss_smoothed": smoothed,
               "val_accuracy": val_m["accuracy"], "val_macro_f1": val_m["macro_f1"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": train_m["seconds"],
               "images_per_second": train_m["images"] / max(train_m["seconds"], 1e-9)}
        result.history.append(row)
        if smoothed < result.best_loss - 1e-6:
            result.best_loss, result.best_accuracy, result.best_epoch, bad_evals = smoothed, val_m["accuracy"], epoch, 0
            # a copy on CPU: the live tensors keep changing
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad_evals += 1
            result.stopped_early = bad_evals >= patience and result.steps >= budget.min_steps // 2 and not last
        due = last or result.stopped_early or time.monotonic() - last_save >= checkpoint_interval_s
        if distributed:  # clocks differ between ranks: rank 0's decides, as the save needs every rank's state
            flag = [due]
            torch.distributed.broadcast_object_list(flag, src=0)
            due = flag[0]
        if checkpoint_path is not None and due:
            rngs = [torch.get_rng_state()]
            if distributed:
                rngs = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(rngs, torch.get_rng_state())
            if rank == 0:
                _save_checkpoint(Path(checkpoint_path), {
                    "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "result": result, "best_state": best_state,
                    "bad_evals": bad_evals, "smoothed": smoothed, "rng": rngs,
                    "loader_rng": train_loader.generator.get_state() if train_loader.generator is not None else None})
            last_save = time.monotonic()
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
                       limit: int | None = None, batch_transform: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Backbone embeddings (the input of the final classifier layer) and softmax outputs;
    ``batch_transform`` finishes each batch's preprocessing on the device
    (``transferops.loading.split_preprocessing``)."""
    from transferops.models import head_layer

    _, _, layer = head_layer(model)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].flatten(1).float().cpu()))
    probs: list[torch.Tensor] = []
    model.eval().to(device)
    n = 0
    try:
        for images, _ in data_loader:
            x = images.to(device)
            probs.append(torch.softmax(model(batch_transform(x) if batch_transform else x).float(), 1).cpu())
            n += images.shape[0]
            if limit is not None and n >= limit:
                break
    finally:
        hook.remove()
    emb = torch.cat(captured)[:limit].numpy() if captured else np.zeros((0, 0), np.float32)
    return emb, (torch.cat(probs)[:limit].numpy() if probs else np.zeros((0, 0), np.float32))
