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

if TYPE_CHECKING:
    import numpy as np
    from torch import nn
    from torchvision.models import Weights

    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.models import Bundle
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
    """Build the model the strategy asks for and fit it; ``on_epoch`` gets each epoch's row."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from transferops.loading import make_loader
    from transferops.models import build_model, count_parameters
    from transferops.strategy import apply_strategy
    from transferops.training import fit, make_optimizer, resolve_device, seed_everything

    cfg = settings.training
    seed_everything(cfg.seed)
    num_classes = len(images.classes)
    model = build_model(src.backbone, num_classes, weights=src.weights if choice.pretrained else None)
    apply_strategy(model, choice)
    optimizer = make_optimizer(model, cfg.lr, choice.backbone_lr_mult, cfg.weight_decay)
    tf = src.weights.transforms()
    train_loader = make_loader(images.split("train"), images.class_to_idx, tf, batch_size=cfg.batch_size,
                               shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers)
    val_loader = make_loader(images.split("val"), images.class_to_idx, tf, batch_size=cfg.batch_size,
                             shuffle=False, num_workers=cfg.num_workers)
    device = resolve_device(cfg.device)
    # progress is for people: stderr, so that stdout can carry one JSON document
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=Console(stderr=True),
                  disable=not progress) as bar:
        job = bar.add_task(f"{choice.name} on {device.type}", total=len(train_loader), status="")

        def epoch_done(row: dict[str, Any]) -> None:
            if on_epoch:
                on_epoch(row)
            bar.update(job, status=f"epoch {row['epoch'] + 1}/{cfg.epochs} val_acc={row['val_accuracy']:.3f}")

        result = fit(model, optimizer, train_loader, val_loader, num_classes=num_classes, device=device,
                     epochs=cfg.epochs, patience=cfg.patience, amp=cfg.amp, channels_last=cfg.channels_last,
                     checkpoint_path=checkpoint, on_epoch_end=epoch_done,
                     on_batch=lambda i, n: bar.update(job, completed=i, total=n))
    return Trained(model, result, count_parameters(model), str(checkpoint))


def evaluate_on_test(settings: "Settings", model: "nn.Module", weights: "Weights", images: "ImageSet") -> dict[str, Any]:
    """Held-out metrics of ``model`` on the test split, preprocessed by its own weights' transforms."""
    from torch import nn

    from transferops.loading import make_loader
    from transferops.training import evaluate, resolve_device

    loader = make_loader(images.split("test"), images.class_to_idx, weights.transforms(),
                         batch_size=settings.training.batch_size, shuffle=False)
    return evaluate(model, nn.CrossEntropyLoss(), loader, resolve_device(settings.training.device),
                    num_classes=len(images.classes))


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


def export_bundle(settings: "Settings", model: "nn.Module", src: "SourceModel", images: "ImageSet", dest: Path,
                  extra: dict[str, Any]) -> Path:
    """Write the trained model as a bundle with its training profile (embeddings of its train split)."""
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
    return bundle.path


def input_example(weights: "Weights", images: "ImageSet") -> "np.ndarray":
    """A preprocessed test image (twice), as the signature's input example."""
    import torch

    from transferops.loading import make_loader

    rec = (images.split("test") or images.records)[:1]
    ds = make_loader(rec * 2, images.class_to_idx, weights.transforms(), batch_size=2, shuffle=False).dataset
    # two rows, so an exported program does not specialise the batch dimension to 1
    return torch.stack([ds[0][0], ds[1][0]]).numpy()
