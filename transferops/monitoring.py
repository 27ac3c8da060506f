"""Monitoring a champion on unlabelled production images, and when that asks for a retrain.

``monitor_batch`` embeds a production batch with the champion's own network and compares it
with the champion's training profile (the embeddings, softmax outputs and labels stored in
its bundle): every test of :mod:`transferops.drift`, label shift by BBSD on the softmax
outputs, the predicted class mix of both samples, and an accuracy estimated without labels
from the calibration stored beside the model (:mod:`transferops.estimate`). Labels that
arrive later give the realised accuracy next to the estimate.

``retrain_decision`` is the retrain policy, a pure function of the result and the settings.
Nothing here imports orchestration or tracking code: the flow adds events, MLflow and Prefect.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from transferops.errors import InputError

if TYPE_CHECKING:
    from transferops.config import MonitorConfig, Settings
    from transferops.data import ImageSet
    from transferops.drift.profile import Profile
    from transferops.estimate import Calibration
    from transferops.models import Bundle

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class RetrainDecision:
    """Whether the monitor asks for a retrain, and why, in a sentence."""

    retrain: bool
    reason: str


def retrain_decision(is_drift: bool, estimated: float | None, reference: float | None, cfg: "MonitorConfig",
                     drift_note: str = "") -> RetrainDecision:
    """The retrain policy.

    ``drift``: any drift retrains. ``drift_and_drop`` (the default): drift *and* an estimated
    accuracy at least ``max_accuracy_drop`` below the held-out accuracy the model was
    calibrated on, because drift that does not hurt the model (new lighting the features
    ignore) need not cost a training run. Without an estimate it falls back to drift alone
    and says so.
    """
    what = f"drift ({drift_note})" if drift_note else "drift"
    if not is_drift:
        return RetrainDecision(False, f"no {what}: the batch looks like the training data")
    if cfg.retrain_on == "drift":
        return RetrainDecision(True, f"{what} detected and monitor.retrain_on is 'drift'")
    if estimated is None or reference is None:
        return RetrainDecision(True, f"{what} detected and the model has no accuracy estimate to weigh it with "
                                     "(no calibration stored with it), so drift alone decides")
    drop = reference - estimated
    if drop >= cfg.max_accuracy_drop:
        return RetrainDecision(True, f"{what} detected and the estimated accuracy {estimated:.3f} is {drop:.3f} below "
                                     f"the held-out {reference:.3f} (monitor.max_accuracy_drop {cfg.max_accuracy_drop})")
    return RetrainDecision(False, f"{what} detected, but the estimated accuracy {estimated:.3f} is within "
                                  f"{cfg.max_accuracy_drop} of the held-out {reference:.3f}: the shift does not hurt the model")


@dataclass
class MonitorResult:
    """One monitoring run: what was compared, what the tests said, the estimate, the decision."""

    model: str
    version: str | None
    batch: str
    n_images: int
    n_embedded: int
    is_drift: bool
    test: str
    statistic: float
    p_val: float
    drift: dict[str, Any]
    class_mix: dict[str, dict[str, float]]
    estimated_accuracy: float | None
    heldout_accuracy: float | None
    estimate_note: str
    realized_accuracy: float | None = None
    n_labelled: int = 0
    decision: RetrainDecision = field(default_factory=lambda: RetrainDecision(False, ""))
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["retrain"], d["retrain_reason"] = self.decision.retrain, self.decision.reason
        del d["decision"]
        return d

    def event_payload(self) -> dict[str, Any]:
        """What the drift events carry: small, flat and JSON-safe (trigger templates read it)."""
        return {"model": self.model, "version": self.version, "test": self.test, "statistic": self.statistic,
                "p_value": self.p_val, "is_drift": self.is_drift, "estimated_accuracy": self.estimated_accuracy,
                "heldout_accuracy": self.heldout_accuracy, "batch": self.batch, "n_images": self.n_images,
                "retrain": self.decision.retrain, "reason": self.decision.reason}


def class_mix(predicted: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Share of each class among ``predicted`` class indices (every class, zeros included)."""
    counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=len(classes))[:len(classes)]
    total = max(int(counts.sum()), 1)
    return {c: round(float(n) / total, 6) for c, n in zip(classes, counts, strict=True)}


def even_indices(n: int, limit: int) -> list[int]:
    """At most ``limit`` of ``range(n)``, spread evenly (deterministic, order kept)."""
    if n <= limit:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def read_labels(path: str | Path, batch: "ImageSet", classes: list[str]) -> dict[int, int]:
    """Labels that arrived later: a CSV with ``path`` and ``label`` columns (path relative to the
    batch folder, or absolute). Returns {index into batch.records: class index}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"labels file {path} does not exist; pass a CSV with path,label columns")
    root = Path(batch.root).resolve()
    index = {}
    for i, r in enumerate(batch.records):
        p = Path(r.path)
        index[str(p.resolve())] = i
        if p.is_absolute() and p.is_relative_to(root):
            index[p.relative_to(root).as_posix()] = i
    to_idx = {c: i for i, c in enumerate(classes)}
    out: dict[int, int] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise InputError(f"labels file {path} needs a header with 'path' and 'label' columns; add it")
        for line, row in enumerate(reader, start=2):
            rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if label not in to_idx:
                raise InputError(f"labels file {path} line {line}: label {label!r} is not a class of the model "
                                 f"({', '.join(classes)}); fix the label")
            key = rel if rel in index else str((root / rel).resolve())
            if key not in index:
                raise InputError(f"labels file {path} line {line}: {rel!r} is not an image of the batch {root}; "
                                 "give paths relative to the batch folder")
            out[index[key]] = to_idx[label]
    if not out:
        raise InputError(f"labels file {path} has no rows; add one path,label row per labelled image")
    return out


def load_calibration(bundle: "Bundle"):
    """The bundle's stored calibration, or None for a model trained before calibrations existed."""
    import json

    from transferops.estimate import Calibration

    p = Path(bundle.path) / CALIBRATION_FILE
    if not p.is_file():
        return None
    return Calibration.from_dict(json.loads(p.read_text()))


def estimate_note(cal: "Calibration", used: str) -> str:
    """One sentence on how the accuracy estimate was made, for the report and the log."""
    base = f"calibrated on {cal.n} held-out images (temperature {cal.temperature:.2f})"
    support = f"images beyond the {cal.support_quantile or 0:.0%} held-out distance to the training embeddings count at chance"
    if used == "regression":
        return (f"regression of ATC, the far share and the class-mix change on {cal.panel_size} synthetic shifts of the "
                f"held-out images, {base}")
    if used == "atc_support":
        return f"ATC {base}; {support}"
    return f"{'ATC' if used == 'atc' else 'average confidence'} {base}"


def monitor_batch(settings: "Settings", bundle: "Bundle", version: str | None, batch: "ImageSet",
                  labels_file: str | Path | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[MonitorResult, "Profile", "Profile"]:
    """Compare an unlabelled batch with the champion's training profile; returns the result, the
    training profile and the batch's embeddings (for plots). Never trains, never needs labels."""
    import torch

    from transferops.drift.profile import Profile, build_profile
    from transferops.drift.report import drift_report
    from transferops.models import model_from_bundle
    from transferops.training import resolve_device

    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    classes = list(bundle.meta["categories"])
    if bundle.profile_path is None:
        raise InputError(f"model bundle {bundle.path} has no training profile; retrain the model with this "
                         "version of transferops to store one")
    reference = Profile.load(bundle.profile_path)
    if not batch.records:
        raise InputError(f"production batch {batch.root} holds no images; pass a folder or manifest with images")
    picked = even_indices(len(batch.records), settings.monitor.max_images)
    chosen = [batch.records[i] for i in picked]
    say(f"embedding {len(chosen)} of {len(batch.records)} production images with model v{version}")
    # channels_last: oneDNN's CPU convolutions run it about 1.4x faster; the values are the same
    model = model_from_bundle(bundle).to(memory_format=torch.channels_last)
    prod = build_profile(model, chosen, {c: i for i, c in enumerate(classes)}, bundle.weights, size=len(chosen),
                         batch_size=settings.monitor.batch_size, device=resolve_device(settings.training.device))
    say("testing for drift against the training profile")
    report = drift_report(reference, prod.embeddings, probs=prod.probs if reference.probs is not None else None,
                          cfg=settings.drift, decision=settings.drift.decision_test)
    cal = load_calibration(bundle)
    estimated = cal.estimate(prod.probs, settings.monitor.estimator, prod.embeddings, reference.embeddings) if cal else None
    note = (estimate_note(cal, cal.method_used(settings.monitor.estimator, prod.embeddings)) if cal
            else "the model has no stored calibration; retrain it to estimate accuracy without labels")
    realized, n_labelled = None, 0
    if labels_file is not None:
        known = read_labels(labels_file, batch, classes)
        rows = [(j, known[i]) for j, i in enumerate(picked) if i in known]
        if not rows:
            raise InputError(f"labels file {labels_file} labels none of the {len(chosen)} images monitored; "
                             "label images of this batch")
        j, y = np.array(rows).T
        realized, n_labelled = float((prod.probs[j].argmax(axis=1) == y).mean()), len(rows)
    train_pred = reference.probs.argmax(axis=1) if reference.probs is not None else reference.labels
    mix = {"production": class_mix(prod.probs.argmax(axis=1), classes)}
    if train_pred is not None:
        mix["training"] = class_mix(train_pred[train_pred >= 0], classes)
    d = report.decision
    result = MonitorResult(settings.model_name, version, str(batch.root), len(batch.records), len(chosen),
                           d.is_drift, d.test, d.distance, d.p_val, report.as_dict(), mix, estimated,
                           cal.heldout_accuracy if cal else None, note, realized, n_labelled)
    result.decision = retrain_decision(d.is_drift, estimated, result.heldout_accuracy, settings.monitor,
                                       f"{d.test} p={d.p_val:.3g}")
    result.seconds = time.perf_counter() - t0
    return result, reference, prod
