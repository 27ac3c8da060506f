"""Every detector on one dataset against one profile: the table ``transferops drift`` prints
and the flows log, with the similarity score and per-class distances."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferops.drift.base import DriftResult, check_embeddings
from transferops.drift.classifier import ClassifierDrift, source_similarity
from transferops.drift.mmd import MMDDrift, mmd2
from transferops.drift.profile import Profile
from transferops.drift.univariate import KSDrift, LabelShiftDrift

TESTS = ("mmd", "classifier", "ks", "bbsd")
MIN_CLASS_SAMPLES = 5


@dataclass
class DriftReport:
    """All test results; ``decision`` is the headline test's result (MMD by default)."""

    results: list[DriftResult]
    similarity: float
    decision: DriftResult
    per_class: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per test, for tables."""
        return [{"test": r.test, "is_drift": r.is_drift, "p_val": round(r.p_val, 6), "threshold": r.threshold,
                 "distance": round(r.distance, 6), "n_ref": r.n_ref, "n_test": r.n_test} for r in self.results]

    def as_dict(self) -> dict[str, Any]:
        return {"is_drift": self.decision.is_drift, "p_val": self.decision.p_val, "threshold": self.decision.threshold,
                "distance": self.decision.distance, "distance_threshold": self.decision.distance_threshold,
                "test": self.decision.test, "similarity": self.similarity,
                "tests": [r.as_dict() for r in self.results], "per_class_distance": self.per_class,
                "skipped": self.skipped}


def drift_report(profile: Profile, embeddings: np.ndarray, *, probs: np.ndarray | None = None,
                 labels: list[str] | None = None, cfg: Any = None, tests: tuple[str, ...] = TESTS,
                 decision: str = "mmd") -> DriftReport:
    """Run ``tests`` on ``embeddings`` (and ``probs`` for BBSD) against ``profile``.

    ``labels`` (one class name per row) give per-class distances: each class's MMD^2 to the
    profile's samples of the same class when the profile has them, else to the whole profile.
    ``cfg`` is a ``DriftConfig`` (alpha, n_permutations, max_samples, seed, ...).
    """
    alpha = getattr(cfg, "alpha", 0.05)
    seed = getattr(cfg, "seed", 0)
    max_samples = getattr(cfg, "max_samples", None)
    x = check_embeddings(embeddings, "target embeddings", profile.embeddings.shape[1])
    ref = profile.embeddings
    detectors: dict[str, Any] = {
        "mmd": lambda: MMDDrift(ref, p_val=alpha, n_permutations=getattr(cfg, "n_permutations", 100),
                                n_components=getattr(cfg, "n_components", 64), shrinkage=getattr(cfg, "shrinkage", 1.0),
                                max_samples=max_samples, seed=seed),
        "classifier": lambda: ClassifierDrift(ref, p_val=alpha, max_samples=max_samples, seed=seed),
        "ks": lambda: KSDrift(ref, p_val=alpha, correction=getattr(cfg, "ks_correction", "permutation"),
                              n_permutations=getattr(cfg, "n_permutations", 100), max_samples=max_samples, seed=seed),
        "bbsd": lambda: LabelShiftDrift(profile.probs, p_val=alpha, correction=getattr(cfg, "ks_correction", "permutation"),
                                        n_permutations=getattr(cfg, "n_permutations", 100), max_samples=max_samples,
                                        seed=seed),
    }
    results, skipped = [], {}
    for name in tests:
        if name == "bbsd" and (probs is None or profile.probs is None):
            skipped[name] = "needs softmax outputs in both the profile and the target"
            continue
        if name == "bbsd" and probs.shape[1] != profile.probs.shape[1]:
            skipped[name] = f"the profile's model has {profile.probs.shape[1]} classes, the target's outputs {probs.shape[1]}"
            continue
        results.append(detectors[name]().predict(probs if name == "bbsd" else x))
    by_name = {r.test: r for r in results}
    similarity = (by_name["classifier"].detail["similarity"] if "classifier" in by_name
                  else source_similarity(ref, x, max_samples=max_samples, seed=seed))
    head = by_name.get(decision) or results[0]
    per_class = per_class_distances(profile, x, labels, seed=seed) if labels is not None else {}
    return DriftReport(results, similarity, head, per_class, skipped)


def per_class_distances(profile: Profile, x: np.ndarray, labels: list[str], *, seed: int = 0) -> dict[str, float]:
    """MMD^2 of each target class to the profile (same class when the profile has it)."""
    labels_arr = np.asarray(labels)
    if len(labels_arr) != len(x):
        raise ValueError(f"{len(labels_arr)} labels for {len(x)} embeddings; pass one label per row")
    names = profile.classes
    ref_labels = profile.labels if profile.labels is not None else None
    out = {}
    for c in sorted(set(labels_arr.tolist())):
        part = x[labels_arr == c]
        if len(part) < MIN_CLASS_SAMPLES:
            continue
        ref = profile.embeddings
        if ref_labels is not None and c in names:
            same = profile.embeddings[ref_labels == names.index(c)]
            ref = same if len(same) >= MIN_CLASS_SAMPLES else ref
        out[str(c)] = round(float(mmd2(ref, part, seed=seed)), 6)
    return out
