"""One training run's model work: build from the source, fit, evaluate, compare, export.

The loop itself is :mod:`transferops.training` (torchvision's reference shape); this
module puts a strategy, a source and a dataset together around it. Tracking stays
outside: :func:`train_model` reports each epoch to ``on_epoch`` (the flows log it to
MLflow), and progress is drawn on stderr so stdout stays free for ``--json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchvision.models import Weights

    from transferops.benefit import TransferBenefit
    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.models import Bundle
    from transferops.slices import EvaluationSlice
    from transferops.sources import SourceModel
    from transferops.strategy import StrategyChoice
    from transferops.training import FitResult


@dataclass
class Trained:
    """A trained model with its history, parameter counts and checkpoint."""

    model: "nn.Module"
    fit: "FitResult"
    params: dict[str, int]
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_key(*parts: Any) -> str:
    """Same data, source, strategy and config give the same checkpoint, so a rerun resumes."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_model(settings: "Settings", src: "SourceModel", choice: "StrategyChoice", images: "ImageSet",
                checkpoint: Path, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                progress: bool = True) -> Trained:
    """Build the model the strategy asks for and run its phases; ``on_epoch`` gets each evaluation's row.

    Every strategy goes through here: a *probe* phase fits the head on cached embeddings
    (:func:`fit_probe`), a *train* phase runs :func:`transferops.training.fit` on the
    phase's trainable blocks and learning rates, under the step budget of the settings.
    Each train phase checkpoints to its own file next to ``checkpoint`` and resumes from it.
    """
    from torch import nn

    from transferops.models import build_model, count_parameters, head_layer
    from transferops.strategies import Phase, get_strategy
    from transferops.training import FitResult, resolve_device, seed_everything

    cfg = settings.training
    seed_everything(cfg.seed)
    strategy = get_strategy(choice.name)
    model = build_model(src.backbone, len(images.classes), weights=src.weights if strategy.pretrained else None)
    device = resolve_device(cfg.device)
    total = FitResult()
    info: dict[str, Any] = {}
    for phase in strategy.phases(choice.params):
        phase.prepare(model)
        if phase.kind == "probe" and isinstance(head_layer(model)[2], nn.Linear):
            row, head = fit_probe(settings, src, model, images, device, step=total.steps)
            info["probe"] = head
            total.history.append(row)
            if on_epoch:
                on_epoch(row)
            continue
        if phase.kind == "probe":  # a head that is not one linear layer (squeezenet's conv): SGD instead
            phase = Phase(phase.name, "train", None, choice.params["lr"], augment=False)
        path = Path(checkpoint)
        phase_ckpt = path.with_name(f"{path.stem}.{phase.name}{path.suffix}")
        if cfg.processes() > 1:  # torchrun: one DDP process per GPU; this process only waits and reports
            from transferops.distributed import launch_phase

            result = launch_phase(settings, model, phase, images, src, phase_ckpt, nproc=cfg.processes(),
                                  step_offset=total.steps, on_epoch=on_epoch, progress=progress, label=choice.name)
        else:
            result = _train_phase(settings, model, phase, images, src, device, phase_ckpt,
                                  step_offset=total.steps, on_epoch=on_epoch, progress=progress, label=choice.name)
        total.history += result.history
        total.steps += result.steps
        total.best_epoch, total.best_accuracy, total.best_loss = result.best_epoch, result.best_accuracy, result.best_loss
        total.stopped_early, total.resumed_from = result.stopped_early, result.resumed_from
        info.setdefault("budgets", {})[phase.name] = result.budget
    return Trained(model, total, count_parameters(model), str(checkpoint), info)


def fit_probe(settings: "Settings", src: "SourceModel", model: "nn.Module", images: "ImageSet", device: Any,
              step: int = 0) -> tuple[dict[str, Any], Any]:
    """Fit ``model``'s head as an L2-regularised logistic regression on cached embeddings of
    its frozen backbone (train and val splits), the strength chosen on validation data or by
    cross-validation when the validation split is tiny; returns the history row and the head."""
    import time

    import torch

    from transferops.features import cached_features
    from transferops.models import head_layer
    from transferops.probe import fit_linear_head

    start = time.perf_counter()
    feats = {split: cached_features(settings.state_dir / "features", model, src.weights, images.split(split),
                                    images.class_to_idx, batch_size=settings.training.batch_size, device=device,
                                    extra_key=src.backbone)
             for split in ("train", "val")}
    head = fit_linear_head(feats["train"].head, feats["train"].labels, feats["val"].head, feats["val"].labels,
                           len(images.classes), seed=settings.training.seed)
    layer = head_layer(model)[2]
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(head.weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(head.bias, dtype=layer.bias.dtype))
    probs = head.predict_proba(feats["train"].head)
    y = feats["train"].labels
    train_loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()) if len(y) else float("nan")
    seconds = time.perf_counter() - start
    yv = feats["val"].labels
    f1 = _macro_f1(yv, head.predict_proba(feats["val"].head).argmax(1), len(images.classes)) if len(yv) else 0.0
    # val_accuracy/val_loss are the l2 selection's figures: a cross-validated estimate when
    # the val split was too small to choose on (head.selection says which)
    row = {"epoch": 0, "step": step, "phase": "probe", "train_loss": train_loss,
           "train_accuracy": float((probs.argmax(1) == y).mean()) if len(y) else 0.0,
           "val_loss": head.loss, "val_loss_smoothed": head.loss, "val_accuracy": head.score, "val_macro_f1": f1,
           "lr": 0.0, "seconds": seconds, "images_per_second": len(y) / max(seconds, 1e-9), "l2": head.l2,
           "cached": all(f.cached for f in feats.values())}
    return row, head


def _macro_f1(y: "np.ndarray", pred: "np.ndarray", n: int) -> float:
    cm = np.bincount(y * n + pred, minlength=n * n).reshape(n, n).astype(float)
    tp = np.diag(cm)
    precision, recall = tp / np.clip(cm.sum(0), 1, None), tp / np.clip(cm.sum(1), 1, None)
    return float(np.mean(2 * precision * recall / np.clip(precision + recall, 1e-12, None)))


def _train_phase(settings: "Settings", model: "nn.Module", phase: Any, images: "ImageSet", src: "SourceModel",
                 device: Any, checkpoint: Path, *, step_offset: int, on_epoch: Callable[[dict[str, Any]], None] | None,
                 progress: bool, label: str, shard: tuple[int, int] | None = None) -> "FitResult":
    """One SGD phase: optimizer groups from the phase, loaders, the budget, and a progress bar on stderr.

    ``shard=(rank, world)``: this process is one DDP rank (:mod:`transferops.distributed`); the
    budget is planned for the whole dataset and global batch, each rank loads ``1/world`` of
    every batch (rounded up), so an epoch has the steps, and a step the images, of one process.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from transferops.loading import loader_transforms, make_loader
    from transferops.training import fit, l2_sp, make_optimizer, plan_budget, small_batch

    cfg = settings.training
    train = images.split("train")
    batch = small_batch(len(train), cfg.batch_size)
    budget = plan_budget(len(train), batch, epochs=cfg.epochs, min_steps=cfg.min_steps,
                         eval_every_steps=cfg.eval_every_steps)
    optimizer = make_optimizer(model, phase.lr, phase.backbone_lr_mult, phase.weight_decay, layer_decay=phase.layer_decay,
                               backbone_weight_decay=0.0 if phase.l2sp else None)
    tf = src.weights.transforms()
    world = shard[1] if shard else 1
    workers = cfg.loader_workers(device, processes=world)
    train_tf, val_tf, on_device = loader_transforms(tf, phase.augment and cfg.augment,
                                                    cfg.device_preprocess and device.type == "cuda")
    train_loader = make_loader(train, images.class_to_idx, train_tf, batch_size=-(-batch // world), shuffle=True,
                               seed=cfg.seed, num_workers=workers, device=device, shard=shard)
    val_loader = make_loader(images.split("val"), images.class_to_idx, val_tf, batch_size=cfg.batch_size,
                             shuffle=False, num_workers=workers, device=device, shard=shard)
    # progress is for people: stderr, so that stdout can carry one JSON document
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=Console(stderr=True),
                  disable=not progress) as bar:
        job = bar.add_task(f"{label}/{phase.name} on {device.type}", total=budget.steps, status="")
        done = {"steps": 0}

        def epoch_done(row: dict[str, Any]) -> None:
            if on_epoch:
                on_epoch(row)
            bar.update(job, status=f"step {row['step'] - step_offset}/{budget.steps} val_acc={row['val_accuracy']:.3f}")

        def batch_done(i: int, n: int) -> None:
            done["steps"] += 1
            bar.update(job, completed=done["steps"])

        result = fit(model, optimizer, train_loader, val_loader, num_classes=len(images.classes), device=device,
                     budget=budget, patience=cfg.patience, smoothing=cfg.smoothing, warmup_fraction=cfg.warmup_fraction,
                     amp=cfg.amp, channels_last=cfg.channels_last,
                     compile=cfg.compile and budget.steps >= cfg.compile_min_steps, cudnn_benchmark=cfg.cudnn_benchmark,
                     penalty=l2_sp(model, phase.l2sp) if phase.l2sp else None, phase=phase.name,
                     step_offset=step_offset, checkpoint_path=checkpoint,
                     checkpoint_interval_s=cfg.checkpoint_interval_s, on_epoch_end=epoch_done, on_batch=batch_done,
                     distributed=shard is not None, batch_transforms=on_device)
    result.budget = budget.as_dict() | {"batch_size": batch}
    return result


@dataclass(frozen=True)
class Baseline:
    """The scratch run a transfer run is compared with, and the three benefits; or why there is none."""

    benefit: "TransferBenefit | None"
    history: list[dict[str, Any]] | None
    note: str


def scratch_baseline(settings: "Settings", src: "SourceModel", choice: "StrategyChoice", images: "ImageSet",
                     checkpoint: Path, transfer: "FitResult | None" = None, progress: bool = True) -> Baseline:
    """Train ``scratch`` under the same budget rules and compare learning curves with ``transfer``.

    Skipped (with the reason) when the run itself trained from scratch, or when the train split
    holds more than ``strategy.baseline_max_train_images``: a second full run is then too dear.
    """
    from transferops.benefit import transfer_benefit
    from transferops.strategy import StrategyChoice, strategy_params

    limit = settings.strategy.baseline_max_train_images
    n = len(images.split("train"))
    if not choice.pretrained:
        return Baseline(None, None, "the run itself trained from scratch")
    if n > limit:
        return Baseline(None, None, f"{n} train images exceed strategy.baseline_max_train_images={limit}")
    if transfer is None or not transfer.history:
        return Baseline(None, None, "the transfer run has no learning curve")
    scratch = StrategyChoice("scratch", "baseline for the transfer-benefit report", strategy_params("scratch", settings))
    run = train_model(settings, src, scratch, images, checkpoint, progress=progress)
    benefit = transfer_benefit(transfer.history, run.fit.history)
    return Baseline(benefit, run.fit.history, f"scratch baseline under the same budget: {benefit.sentence()}")


def evaluate_on_test(settings: "Settings", model: "nn.Module", weights: "Weights", images: "ImageSet") -> dict[str, Any]:
    """Held-out metrics of ``model`` on the test split, preprocessed by its own weights' transforms."""
    from torch import nn

    from transferops.loading import make_loader
    from transferops.training import evaluate, resolve_device

    loader = make_loader(images.split("test"), images.class_to_idx, weights.transforms(),
                         batch_size=settings.training.batch_size, shuffle=False)
    return evaluate(model, nn.CrossEntropyLoss(), loader, resolve_device(settings.training.device),
                    num_classes=len(images.classes), classes=images.classes)


@dataclass(frozen=True)
class InferenceCost:
    """What serving the model costs: median milliseconds per batch by batch size, and its size."""

    latency_ms: dict[int, float]  # batch size -> median ms of one forward pass; {} when not measured
    params: int  # parameters, trainable or not
    bytes: int  # bytes of the state dict's tensors (the weights file is this plus a few kB of pickle)
    device: str

    def metrics(self) -> dict[str, float]:
        """``latency_ms_b<N>`` per batch size, ``model_params`` and ``model_bytes``, as run metrics."""
        return {f"latency_ms_b{b}": ms for b, ms in self.latency_ms.items()} | {
            "model_params": self.params, "model_bytes": self.bytes}


def measure_latency(model: "nn.Module", input_shape: tuple[int, ...], device: Any, batch_sizes: tuple[int, ...] = (1, 64),
                    repeats: int = 5, budget_s: float = 0.25) -> InferenceCost:
    """Median latency of ``model`` on ``device`` for a batch of each size of ``input_shape``
    (C, H, W) images, and the model's size.

    As served: eval mode, float32, ``torch.inference_mode``. Each batch size gets one untimed
    warm-up pass (allocator, cuDNN/oneDNN kernel choice), then up to ``repeats`` timed passes,
    fewer once the timed ones took ``budget_s`` (at least one); CUDA is synchronised around
    each, since its kernels run asynchronously. ``repeats=0`` measures only the size: the test
    suite trains many models, and a batch of 64 costs ~0.15 s on 2 CPU cores at 32 px.
    """
    import time

    import torch

    device = torch.device(device)
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    params = sum(p.numel() for p in model.parameters())
    latency: dict[int, float] = {}
    if repeats > 0:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        was_training = model.training
        model.eval().to(device)
        gen = torch.Generator().manual_seed(0)
        try:
            with torch.inference_mode():
                for b in batch_sizes:
                    x = torch.randn(b, *input_shape, generator=gen).to(device)
                    model(x)
                    times: list[float] = []
                    while len(times) < repeats and (not times or sum(times) < budget_s):
                        sync()
                        start = time.perf_counter()
                        model(x)
                        sync()
                        times.append(time.perf_counter() - start)
                    latency[b] = float(np.median(times) * 1000)
        finally:
            model.train(was_training)
    return InferenceCost(latency, params, size, str(device))


@dataclass(frozen=True)
class ChampionEvaluation:
    """The champion's metrics on the challenger's held-out split, or why there are none."""

    metrics: dict[str, Any] | None
    version: str | None
    note: str


def evaluate_champion(settings: "Settings", bundle: "Bundle | None", version: str | None,
                      images: "ImageSet") -> ChampionEvaluation:
    """Evaluate the champion's ``bundle`` on the same test split as the challenger.

    A champion with another class set cannot be scored on this data: it gets no metrics
    (and the promotion rule keeps it unless told otherwise), with the reason.
    """
    from transferops.models import model_from_bundle

    if bundle is None:
        return ChampionEvaluation(None, None, "no champion yet")
    if bundle.meta["categories"] != images.classes:
        return ChampionEvaluation(None, version, f"champion v{version} has classes {bundle.meta['categories']}, "
                                                 f"not {images.classes}")
    metrics = evaluate_on_test(settings, model_from_bundle(bundle), bundle.weights, images)
    return ChampionEvaluation(metrics, version, f"champion v{version} evaluated on the same test split")


SLICE_METRICS = ("accuracy", "macro_f1", "ece")


def evaluate_slices(settings: "Settings", model: "nn.Module", weights: "Weights", champion_bundle: "Bundle | None",
                    slices: "list[EvaluationSlice]") -> dict[str, dict[str, Any]]:
    """Challenger and champion on each extra held-out slice, by the same code as the test split:
    ``{slice: {"images", "description", "challenger": {accuracy, macro_f1, ece}, "champion": ... or None}}``."""
    from transferops.models import model_from_bundle

    champion = model_from_bundle(champion_bundle) if champion_bundle is not None else None
    out: dict[str, dict[str, Any]] = {}
    for sl in slices:
        mine = evaluate_on_test(settings, model, weights, sl.images)
        theirs = evaluate_on_test(settings, champion, champion_bundle.weights, sl.images) if champion is not None else None
        out[sl.name] = {"images": sl.size, "description": sl.description,
                        "challenger": {k: mine[k] for k in SLICE_METRICS},
                        "champion": {k: theirs[k] for k in SLICE_METRICS} if theirs else None}
    return out


def export_bundle(settings: "Settings", model: "nn.Module", src: "SourceModel", images: "ImageSet", dest: Path,
                  extra: dict[str, Any], shift_panel: bool = True) -> Path:
    """Write the trained model as a bundle with its training profile (embeddings of its train
    split) and its accuracy calibration; ``shift_panel=False`` skips the regression's synthetic
    shifts (a source model is a starting point for transfer, not a model the monitor watches)."""
    from transferops.models import save_bundle, transforms_spec
    from transferops.sources import embed_images
    from transferops.training import resolve_device

    bundle = save_bundle(model, dest, backbone=src.backbone, categories=images.classes,
                         transforms=transforms_spec(src.weights), extra=extra)
    profile = embed_images(model, images, "train", src.weights, settings.drift.profile_size,
                           settings.training.batch_size, resolve_device(settings.training.device),
                           meta={"backbone": src.backbone, "weights": str(bundle.path), "data": str(images.root),
                                 "transforms": transforms_spec(src.weights)})
    profile.save(bundle.path / "profile.npz")
    write_calibration(settings, model, src, images, bundle.path, reference=profile.embeddings, shift_panel=shift_panel)
    return bundle.path


def write_calibration(settings: "Settings", model: "nn.Module", src: "SourceModel", images: "ImageSet",
                      folder: Path, reference: "np.ndarray | None" = None, shift_panel: bool = True) -> Path | None:
    """Fit the accuracy estimate the monitor uses on the held-out images (val and test: the model
    never trained on either), with the support radius around the training profile's
    ``reference`` embeddings when given, and, for the regression estimator, on up to
    ``monitor.calibration_images`` of them under each shift of ``transferops.corruptions.PANEL``;
    store it beside the model. None when there are too few held-out images."""
    import json

    from transferops.drift.profile import build_profile
    from transferops.estimate import MIN_CALIBRATION, fit_calibration
    from transferops.monitoring import CALIBRATION_FILE
    from transferops.training import resolve_device

    held = images.split("val") + images.split("test")
    if len(held) < MIN_CALIBRATION:
        return None
    device = resolve_device(settings.training.device)
    out = build_profile(model, held, images.class_to_idx, src.weights, size=len(held),
                        batch_size=settings.training.batch_size, device=device)
    panel = []
    if shift_panel and settings.monitor.estimator == "regression" and reference is not None:
        panel = panel_outputs(model, held, images.class_to_idx, src.weights, settings.monitor.calibration_images,
                            settings.monitor.batch_size, device, settings.training.seed)
    cal = fit_calibration(out.probs, out.labels, method=settings.monitor.estimator, embeddings=out.embeddings,
                          reference=reference, panel=panel, seed=settings.training.seed)
    path = folder / CALIBRATION_FILE
    path.write_text(json.dumps(cal.as_dict(), indent=1))
    return path


def panel_outputs(model: "nn.Module", records: list, class_to_idx: dict[str, int], weights: "Weights", size: int,
                batch_size: int, device: "torch.device", seed: int = 0) -> list[tuple["np.ndarray", "np.ndarray", "np.ndarray"]]:
    """``(probs, labels, embeddings)`` of up to ``size`` of ``records`` (an even spread) under
    each corruption of ``transferops.corruptions.PANEL``, applied before the model's own
    preprocessing."""
    import torch
    from torchvision.transforms import v2

    from transferops.corruptions import PANEL, Corrupt
    from transferops.loading import make_loader, split_preprocessing
    from transferops.training import extract_embeddings

    chosen = [records[i] for i in np.linspace(0, len(records) - 1, min(size, len(records))).round().astype(int)]
    labels = np.array([class_to_idx[r.label] for r in chosen], dtype=np.int64)
    per_image, per_batch = split_preprocessing(weights.transforms())
    panel = []
    # channels_last: oneDNN's CPU convolutions run it faster with the same values; `to` works
    # in place, so the model is put back before it is saved or registered
    model.to(memory_format=torch.channels_last)
    try:
        for i, (kind, strength) in enumerate(PANEL):
            loader = make_loader(chosen, class_to_idx, v2.Compose([Corrupt(kind, strength, seed + i), per_image]),
                                 batch_size=batch_size, shuffle=False)
            emb, probs = extract_embeddings(model, loader, torch.device(device), batch_transform=per_batch)
            panel.append((probs, labels, emb))
    finally:
        model.to(memory_format=torch.contiguous_format)
    return panel


def input_example(weights: "Weights", images: "ImageSet") -> "np.ndarray":
    """A preprocessed test image (twice), as the signature's input example."""
    import torch

    from transferops.loading import make_loader

    rec = (images.split("test") or images.records)[:1]
    ds = make_loader(rec * 2, images.class_to_idx, weights.transforms(), batch_size=2, shuffle=False).dataset
    # two rows, so an exported program does not specialise the batch dimension to 1
    return torch.stack([ds[0][0], ds[1][0]]).numpy()


def example_images(images: "ImageSet", n: int = 2) -> list[bytes]:
    """The file bytes of ``n`` held-out images: the served model's input example (what a caller sends)."""
    from transferops.data import read_bytes

    recs = (images.split("test") or images.records)[:n]
    return [read_bytes(r) for r in (recs * n)[:n]]
