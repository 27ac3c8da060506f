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
    from transferops.sources import SourceModel
    from transferops.strategy import StrategyChoice


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
                  drift: DriftOutcome) -> "StrategyChoice":
    """The named strategy, or for ``auto`` the classic rule from size and similarity.

    ``auto`` needs a similarity, so a source without a profile is refused here, before
    any training, with the two ways out.
    """
    from transferops.data import per_class_train_size
    from transferops.models import build_model
    from transferops.strategy import choose_strategy, n_blocks, strategy_by_name

    blocks = n_blocks(build_model(src.backbone, max(len(images.classes), 1), weights=None))
    sim = drift.similarity
    if requested == "auto":
        if sim is None:
            raise InputError(f"strategy 'auto' needs a source similarity, but {drift.reason}; "
                             "pass --source-profile FILE.npz or name a strategy")
        return choose_strategy(per_class_train_size(images), sim, n_blocks=blocks, cfg=settings.strategy,
                               backbone_lr_mult=settings.training.backbone_lr_mult)
    return strategy_by_name(requested, n_blocks=blocks, cfg=settings.strategy,
                            backbone_lr_mult=settings.training.backbone_lr_mult, similarity=sim)
