"""Prefect tasks around the core's models, drift, strategy and training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torchvision.models import Weights

from tasks import registry
from transferops.config import Settings
from transferops.data import ImageSet, per_class_train_size
from transferops.loading import make_loader
from transferops.drift import DriftResult
from transferops.drift.profile import Profile, build_profile
from transferops.drift.report import DriftReport, drift_report
from transferops.models import (build_model, count_parameters, load_bundle, resolve_weights, save_bundle,
                                transforms_spec)
from transferops.strategy import StrategyChoice, apply_strategy, choose_strategy, n_blocks, strategy_by_name
from transferops.training import (FitResult, evaluate, fit, make_optimizer, resolve_device,
                                  seed_everything)


@dataclass
class SourceModel:
    """Where transfer starts: a backbone, its weights (with preprocessing) and its source profile."""

    uri: str
    backbone: str
    weights: Weights
    profile: Profile | None
    profile_origin: str

    @property
    def categories(self) -> list[str]:
        return list(self.weights.meta.get("categories") or [])


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def resolve_source(settings: Settings, source: str, backbone: str | None = None,
                   profile: str | None = None) -> SourceModel:
    """Open ``source``: ``models:/NAME@ALIAS``, ``BACKBONE:WEIGHTS`` (torchvision enum), a bundle folder,
    or a state-dict file with ``backbone``; an explicit ``profile`` (.npz) overrides the bundle's."""
    if source.startswith("models:/"):
        dest = settings.state_dir / "sources" / hashlib.sha1(source.encode()).hexdigest()[:12]
        folder, _tags = registry.download_bundle.fn(settings, source, dest)
        bundle = load_bundle(folder)
        name, weights, prof = bundle.meta["backbone"], bundle.weights, bundle.profile_path
    elif Path(source).expanduser().is_dir():
        bundle = load_bundle(Path(source).expanduser())
        name, weights, prof = bundle.meta["backbone"], bundle.weights, bundle.profile_path
    elif ":" in source and not Path(source).expanduser().exists():
        name, enum = source.split(":", 1)
        weights, prof = resolve_weights(name, enum), None
    else:
        if not backbone:
            raise ValueError(f"source {source} is a weights file; also pass --backbone NAME")
        name, weights, prof = backbone, resolve_weights(backbone, source), None
    if profile:
        prof = Path(profile).expanduser()
        if not prof.is_file():
            raise FileNotFoundError(f"source profile {prof} does not exist; pass an .npz built by transferops")
    return SourceModel(source, name, weights, Profile.load(prof) if prof else None, str(prof) if prof else "none")


def source_network(src: SourceModel) -> nn.Module:
    """The source model itself (its own head kept), for embedding target data."""
    n = len(src.categories) or 1000
    return build_model(src.backbone, n, weights=src.weights).eval()


def embed_images(model: nn.Module, images: ImageSet, split: str | None, weights: Weights, limit: int,
                 batch_size: int, device: torch.device, meta: dict[str, Any] | None = None) -> Profile:
    """Embeddings, softmax outputs and labels of up to ``limit`` images of ``split`` (None: all),
    preprocessed by ``weights.transforms()``; also the shape of a stored profile."""
    records = images.split(split) if split else images.records
    return build_profile(model, records, images.class_to_idx, weights, size=limit, batch_size=batch_size,
                         device=device, meta=meta)


@task(cache_policy=NO_CACHE)
def profile_backbone(settings: Settings, backbone: str, weights: str, data: Path, size: int | None = None) -> Profile:
    """A source profile of any torchvision backbone from a folder of source-domain images.

    ``weights`` is a weights enum name (from the torch cache, never downloaded here), a
    state-dict file or a bundle folder. Every image of every split is a candidate.
    """
    from transferops.data import scan_dataset

    src = SourceModel(f"{backbone}:{weights}", backbone, resolve_weights(backbone, weights), None, "none")
    if src.weights is None:
        raise ValueError(f"--weights {weights} means random weights; a source profile needs the pretrained weights")
    images = scan_dataset(data, settings.data.val_fraction, settings.data.test_fraction)
    meta = {"backbone": backbone, "weights": str(weights), "data": str(Path(data).resolve()),
            "transforms": transforms_spec(src.weights), "source_categories": len(src.categories)}
    return embed_images(source_network(src), images, None, src.weights, size or settings.drift.profile_size,
                        settings.training.batch_size, resolve_device(settings.training.device), meta)


@dataclass
class DriftOutcome:
    """A drift report, or the reason the tests could not run."""

    report: DriftReport | None
    reason: str
    target_embeddings: np.ndarray | None = None

    @property
    def result(self) -> DriftResult | None:
        """The headline test's result (``drift.decision_test``)."""
        return self.report.decision if self.report else None

    @property
    def similarity(self) -> float | None:
        return self.report.similarity if self.report else None

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result.as_dict() if self.result else None, "reason": self.reason,
                "similarity": self.similarity, "report": self.report.as_dict() if self.report else None}


@task(cache_policy=NO_CACHE)
def measure_drift(settings: Settings, src: SourceModel, images: ImageSet, split: str | None = "train") -> DriftOutcome:
    """Every drift test of the target's ``split`` (None: every image) against the source profile."""
    if src.profile is None:
        return DriftOutcome(None, f"source {src.uri} has no profile (reference embeddings of its source domain)")
    cfg = settings.drift
    device = resolve_device(settings.training.device)
    target = embed_images(source_network(src), images, split, src.weights, cfg.max_samples,
                          settings.training.batch_size, device)
    labels = [images.classes[i] for i in target.labels]
    # the source network's softmax is over the *source* classes: BBSD then compares class mixes
    report = drift_report(src.profile, target.embeddings, probs=target.probs, labels=labels, cfg=cfg,
                          decision=cfg.decision_test)
    res = report.decision
    verdict = "drift" if res.is_drift else "no drift"
    return DriftOutcome(report, f"{verdict}: {res.test} p={res.p_val:.4f} at alpha={res.threshold}; "
                                f"similarity {report.similarity:.3f}", target.embeddings)


@task(cache_policy=NO_CACHE)
def pick_strategy(settings: Settings, requested: str, src: SourceModel, images: ImageSet,
                  drift: DriftOutcome) -> StrategyChoice:
    """Apply the named strategy, or the ``auto`` rule from size and similarity."""
    probe = build_model(src.backbone, max(len(images.classes), 1), weights=None)
    blocks = n_blocks(probe)
    per_class = per_class_train_size(images)
    sim = drift.similarity
    if requested == "auto":
        if sim is None:
            raise ValueError(f"strategy 'auto' needs a source similarity, but {drift.reason}; "
                             "pass --source-profile FILE.npz or name a strategy")
        return choose_strategy(per_class, sim, n_blocks=blocks, cfg=settings.strategy,
                               backbone_lr_mult=settings.training.backbone_lr_mult)
    return strategy_by_name(requested, n_blocks=blocks, cfg=settings.strategy,
                            backbone_lr_mult=settings.training.backbone_lr_mult, similarity=sim)


@dataclass
class Trained:
    """A trained model with its history and parameter counts."""

    model: nn.Module
    fit: FitResult
    params: dict[str, int]
    checkpoint: str
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_key(*parts: Any) -> str:
    """Same data, source, strategy and config -> same checkpoint, so a rerun resumes."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@task(cache_policy=NO_CACHE)
def train_model(settings: Settings, run_id: str, src: SourceModel, choice: StrategyChoice, images: ImageSet,
                key: str) -> Trained:
    """Build the model the strategy asks for and fit it, logging each epoch to MLflow."""
    cfg = settings.training
    seed_everything(cfg.seed)
    num_classes = len(images.classes)
    model = build_model(src.backbone, num_classes, weights=src.weights if choice.pretrained else None)
    apply_strategy(model, choice)
    lr_mult = choice.backbone_lr_mult
    optimizer = make_optimizer(model, cfg.lr, lr_mult, cfg.weight_decay)
    tf = src.weights.transforms()
    train_loader = make_loader(images.split("train"), images.class_to_idx, tf, batch_size=cfg.batch_size,
                               shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers)
    val_loader = make_loader(images.split("val"), images.class_to_idx, tf, batch_size=cfg.batch_size,
                             shuffle=False, num_workers=cfg.num_workers)
    device = resolve_device(cfg.device)
    ckpt = settings.checkpoints_dir / f"{key}.pt"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False) as bar:
        job = bar.add_task(f"{choice.name} on {device.type}", total=len(train_loader), status="")

        def on_epoch(row: dict[str, Any]) -> None:
            registry.log_metrics(settings, run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
            bar.update(job, status=f"epoch {row['epoch'] + 1}/{cfg.epochs} val_acc={row['val_accuracy']:.3f}")

        result = fit(model, optimizer, train_loader, val_loader, num_classes=num_classes, device=device,
                     epochs=cfg.epochs, patience=cfg.patience, amp=cfg.amp, channels_last=cfg.channels_last,
                     checkpoint_path=ckpt, on_epoch_end=on_epoch,
                     on_batch=lambda i, n: bar.update(job, completed=i, total=n))
    return Trained(model, result, count_parameters(model), str(ckpt))


@task(cache_policy=NO_CACHE)
def evaluate_on_test(settings: Settings, model: nn.Module, weights: Weights, images: ImageSet) -> dict[str, Any]:
    """Held-out metrics of ``model`` on the test split, preprocessed by its own weights' transforms."""
    loader = make_loader(images.split("test"), images.class_to_idx, weights.transforms(),
                         batch_size=settings.training.batch_size, shuffle=False)
    return evaluate(model, nn.CrossEntropyLoss(), loader, resolve_device(settings.training.device),
                    num_classes=len(images.classes))


@task(cache_policy=NO_CACHE)
def evaluate_champion(settings: Settings, images: ImageSet) -> tuple[dict[str, Any] | None, str | None, str]:
    """The current champion's metrics on the same test split: (metrics, version, note)."""
    from transferops.models import model_from_bundle

    mv = registry.alias_version(settings, settings.model_name, registry.CHAMPION)
    if mv is None:
        return None, None, "no champion yet"
    dest = settings.state_dir / "champions" / f"v{mv.version}"
    folder, _ = registry.download_bundle.fn(settings, f"models:/{settings.model_name}/{mv.version}", dest)
    bundle = load_bundle(folder)
    if bundle.meta["categories"] != images.classes:
        return None, mv.version, f"champion v{mv.version} has classes {bundle.meta['categories']}, not {images.classes}"
    metrics = evaluate_on_test.fn(settings, model_from_bundle(bundle), bundle.weights, images)
    return metrics, mv.version, f"champion v{mv.version} evaluated on the same test split"


@task(cache_policy=NO_CACHE)
def export_bundle(settings: Settings, model: nn.Module, src: SourceModel, images: ImageSet, dest: Path,
                  extra: dict[str, Any]) -> Path:
    """Write the trained model as a bundle with its training profile (embeddings of its train split)."""
    device = resolve_device(settings.training.device)
    bundle = save_bundle(model, dest, backbone=src.backbone, categories=images.classes,
                         transforms=transforms_spec(src.weights), extra=extra)
    profile = embed_images(model, images, "train", src.weights, settings.drift.profile_size,
                           settings.training.batch_size, device,
                           meta={"backbone": src.backbone, "weights": str(bundle.path), "data": str(images.root),
                                 "transforms": transforms_spec(src.weights)})
    profile.save(bundle.path / "profile.npz")
    return bundle.path


def input_example(weights: Weights, images: ImageSet) -> np.ndarray:
    """A preprocessed test image (twice), as the signature's input example."""
    rec = (images.split("test") or images.records)[:1]
    ds = make_loader(rec * 2, images.class_to_idx, weights.transforms(), batch_size=2, shuffle=False).dataset
    # two rows, so an exported program does not specialise the batch dimension to 1
    return torch.stack([ds[0][0], ds[1][0]]).numpy()


@task(cache_policy=NO_CACHE)
def scratch_source(images: ImageSet, backbone: str, image_size: int) -> SourceModel:
    """A source with no weights yet: preprocessing from the source data's own channel statistics."""
    from transferops.loading import compute_mean_std
    from transferops.models import make_weights

    mean, std = compute_mean_std(images.split("train"), image_size)
    meta = {"backbone": backbone, "categories": images.classes,
            "transforms": {"crop_size": image_size, "resize_size": image_size, "mean": mean, "std": std,
                           "interpolation": "bilinear"}}
    return SourceModel(f"scratch:{backbone}", backbone, make_weights(Path("(untrained)"), meta), None, "none")
