"""Before training: how far the target is from the source domain, and which reuse strategy follows.

:func:`measure_drift` embeds the target with the source network and runs every drift test
of :mod:`transferops.drift` against the source profile; :func:`pick_strategy` turns that
(and the dataset's size) into a :class:`~transferops.strategy.StrategyChoice`. Both are
pure functions of their inputs; the flows wrap them as tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transferops.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.drift import DriftResult
    from transferops.drift.report import DriftReport
    from transferops.search import TrialMap
    from transferops.sources import SourceModel
    from transferops.strategy import Evidence, StrategyChoice


@dataclass
class DriftOutcome:
    """A drift report of the target against the source profile, or the reason there is none."""

    report: "DriftReport | None"
    reason: str
    target_embeddings: "np.ndarray | None" = None

    @property
    def result(self) -> "DriftResult | None":
        """The headline test's result (``drift.decision_test``)."""
        return self.report.decision if self.report else None

    @property
    def similarity(self) -> float | None:
        """The [0, 1] similarity to the source domain the strategy rule reads."""
        return self.report.similarity if self.report else None

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result.as_dict() if self.result else None, "reason": self.reason,
                "similarity": self.similarity, "report": self.report.as_dict() if self.report else None}


def measure_drift(settings: "Settings", src: "SourceModel", images: "ImageSet",
                  split: str | None = "train") -> DriftOutcome:
    """Every drift test of ``images`` (their ``split``; None: every image) against the source profile.

    Unlabelled images are fine: the per-class distances are then left out.
    """
    from transferops.drift.report import drift_report
    from transferops.sources import embed_images, source_network
    from transferops.training import resolve_device

    if src.profile is None:
        return DriftOutcome(None, f"source {src.uri} has no profile (reference embeddings of its source domain)")
    cfg = settings.drift
    target = embed_images(source_network(src), images, split, src.weights, cfg.max_samples,
                          settings.training.batch_size, resolve_device(settings.training.device))
    labels = [images.classes[i] for i in target.labels] if (target.labels >= 0).all() and images.classes else None
    # the source network's softmax is over the *source* classes: BBSD then compares class mixes
    report = drift_report(src.profile, target.embeddings, probs=target.probs, labels=labels, cfg=cfg,
                          decision=cfg.decision_test)
    res = report.decision
    verdict = "drift" if res.is_drift else "no drift"
    return DriftOutcome(report, f"{verdict}: {res.test} p={res.p_val:.4f} at alpha={res.threshold}; "
                                f"similarity {report.similarity:.3f}", target.embeddings)


def pick_strategy(settings: "Settings", requested: str, src: "SourceModel", images: "ImageSet",
                  drift: DriftOutcome, map_trials: "TrialMap | None" = None) -> "StrategyChoice":
    """The named strategy with its parameters, ``auto``'s rule on measured evidence, or ``search``'s winner.

    ``partial_finetune`` measures its k (see :func:`choose_freeze_blocks`) unless the settings
    fix it. Whatever was measured lands in ``choice.evidence`` and its cost in
    ``choice.selection_seconds``. ``map_trials`` runs the search's trials of a rung (default:
    one after another; see :func:`transferops.search.search_strategy`); other requests ignore it.
    """
    import time

    from transferops.strategy import CHOICES, StrategyChoice, choose_strategy, describe, strategy_params

    if requested not in CHOICES:
        raise InputError(f"unknown strategy '{requested}'; choose one of: {', '.join(CHOICES)}")
    start = time.perf_counter()
    if requested == "search":
        from transferops.search import search_strategy

        return search_strategy(settings, src, images, drift, map_trials)
    evidence: dict[str, Any] = {}
    if requested == "auto":
        ev = measure_evidence(settings, src, images, drift)
        name, reason = choose_strategy(ev, settings)
        evidence = ev.as_dict()
    else:
        name, reason = requested, ""
    k = None
    if name == "partial_finetune":
        k, k_reason, scores = choose_freeze_blocks(settings, src, images)
        evidence["block_probe"] = scores
        reason = f"{reason} {k_reason}".strip()
    params = strategy_params(name, settings, freeze_blocks=k)
    how = describe(name, params)
    reason = f"{reason} Trains: {how}." if reason else f"chosen by name: {how}."
    return StrategyChoice(name, reason, params, evidence, time.perf_counter() - start)


def _probe_records(images: "ImageSet", limit: int) -> dict[str, list]:
    """Train and val records, thinned evenly to at most ``limit`` together (deterministic)."""
    out = {}
    total = len(images.split("train")) + len(images.split("val"))
    step = max(1, -(-total // max(limit, 1)))
    for split in ("train", "val"):
        out[split] = images.split(split)[::step]
    return out


def _source_features(settings: "Settings", src: "SourceModel", images: "ImageSet", blocks: bool = False):
    """Source-network features of the (thinned) train+val images, through the feature cache."""
    import numpy as np

    from transferops.features import FeatureSet, cached_features
    from transferops.models import backbone_blocks
    from transferops.sources import source_network
    from transferops.training import resolve_device

    model = source_network(src)
    parts = []
    for records in _probe_records(images, settings.strategy.probe_max_images).values():
        if records:
            parts.append(cached_features(settings.state_dir / "features", model, src.weights, records,
                                         images.class_to_idx, batch_size=settings.training.batch_size,
                                         device=resolve_device(settings.training.device), extra_key=src.backbone,
                                         blocks=backbone_blocks(model) if blocks else ()))
    names = list(parts[0].layers)
    return FeatureSet({n: np.concatenate([p.layers[n] for p in parts]) for n in names},
                      np.concatenate([p.labels for p in parts]))


def measure_evidence(settings: "Settings", src: "SourceModel", images: "ImageSet", drift: DriftOutcome) -> "Evidence":
    """What ``auto`` decides on: size, a cross-validated linear probe and LogME on the source
    features (the transferability), and the input shift the drift stage measured."""
    from transferops.data import per_class_train_size
    from transferops.probe import chance_accuracy, logme, probe_accuracy
    from transferops.strategy import Evidence

    feats = _source_features(settings, src, images)
    n = len(images.classes)
    res = drift.result
    return Evidence(per_class=per_class_train_size(images), n_classes=n,
                    probe_accuracy=probe_accuracy(feats.head, feats.labels, n, seed=settings.training.seed),
                    chance=chance_accuracy(feats.labels, n), logme=logme(feats.head, feats.labels),
                    shift_p_val=res.p_val if res else None, shift_test=res.test if res else None,
                    similarity=drift.similarity, budget=settings.strategy.budget)


def choose_freeze_blocks(settings: "Settings", src: "SourceModel", images: "ImageSet") -> tuple[int, str, list[dict[str, Any]]]:
    """k for ``partial_finetune``: freeze up to the block whose pooled features a linear probe
    reads best; the blocks after it are the source-specific ones that must adapt.

    One forward pass embeds the target at every block (cached); a cross-validated probe
    scores each. At least one block always trains. ``strategy.partial_freeze_blocks`` fixes k.
    """
    from transferops.probe import probe_accuracy

    names = _block_names(src)  # builds the network once; the features below come in the same order
    n_blocks = len(names)
    fixed = settings.strategy.partial_freeze_blocks
    if fixed is not None:
        k = min(fixed, n_blocks)
        return k, f"The first {k} of {n_blocks} blocks are frozen, as strategy.partial_freeze_blocks says.", []
    feats = _source_features(settings, src, images, blocks=True)
    n = len(images.classes)
    scores = [{"block": name, "probe_accuracy": probe_accuracy(feats.layers[name], feats.labels, n, seed=settings.training.seed)}
              for name in names]
    best = max(range(len(scores)), key=lambda i: (round(scores[i]["probe_accuracy"], 3), i))  # ties: the deeper block
    k = max(1, min(best + 1, n_blocks - 1))
    last = scores[-1]
    return k, (f"Per-block linear probes peak at {scores[best]['block']} ({scores[best]['probe_accuracy']:.2f}; "
               f"last block {last['block']}: {last['probe_accuracy']:.2f}), so the first {k} of {n_blocks} blocks stay "
               "frozen and the later, source-specific ones adapt."), scores


def _block_names(src: "SourceModel") -> list[str]:
    from transferops.models import backbone_blocks
    from transferops.sources import source_network

    return [name for name, _ in backbone_blocks(source_network(src))]
