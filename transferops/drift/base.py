"""The detector contract, modelled on alibi-detect, and input checks shared by every test.

A detector is fitted on a reference sample at construction. ``score(x)`` computes the
statistic and its p-value; ``predict(x)`` decides and returns a :class:`DriftResult` with
``is_drift``, ``p_val``, ``threshold`` (the significance level), ``distance`` (the
statistic) and ``distance_threshold`` (the statistic's critical value, where the test
has one), plus per-feature or per-class ``detail`` where it applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferops.errors import InputError

MIN_SAMPLES = 5


class DriftInputError(InputError):
    """Embeddings of the wrong shape, with NaNs, or too few of them."""


@dataclass(frozen=True)
class DriftScore:
    """What ``score()`` returns: the p-value, the statistic, its critical value and any detail."""

    p_val: float
    distance: float
    distance_threshold: float = float("nan")
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one test, as alibi-detect's ``predict()`` returns it."""

    is_drift: bool
    p_val: float
    threshold: float
    distance: float
    distance_threshold: float
    n_ref: int
    n_test: int
    test: str = "mmd"
    detail: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_embeddings(x: Any, name: str, dim: int | None = None, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """``x`` as a finite float32 (samples, features) array, or a DriftInputError naming the problem."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DriftInputError(f"{name} must be a 2-D array (samples, features), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DriftInputError(f"{name} has {x.shape[1]} features but the reference has {dim}; embed both with the same backbone")
    if x.shape[0] < min_samples:
        raise DriftInputError(f"{name} has {x.shape[0]} samples; a two-sample test needs at least {min_samples}")
    if not np.isfinite(x).all():
        raise DriftInputError(f"{name} contains NaN or infinite values; check the images and the backbone")
    return x


def subsample(x: np.ndarray, max_samples: int | None, seed: int, salt: int) -> np.ndarray:
    """At most ``max_samples`` rows of ``x``, chosen reproducibly (order kept)."""
    if max_samples is None or len(x) <= max_samples:
        return x
    rng = np.random.default_rng([seed, salt])
    return x[np.sort(rng.choice(len(x), max_samples, replace=False))]


class Detector:
    """Base of every detector: holds the reference and the level; ``predict`` decides from ``score``."""

    name = "detector"

    def __init__(self, x_ref: Any, *, p_val: float = 0.05, max_samples: int | None = None, seed: int = 0,
                 min_samples: int = MIN_SAMPLES):
        if not 0 < p_val < 1:
            raise ValueError(f"p_val={p_val} must lie in (0, 1)")
        self.p_val, self.seed, self.max_samples, self.min_samples = p_val, seed, max_samples, min_samples
        self.x_ref = subsample(check_embeddings(x_ref, "reference embeddings", None, min_samples), max_samples, seed, 1)

    def _test_sample(self, x: Any) -> np.ndarray:
        x = check_embeddings(x, "test embeddings", self.x_ref.shape[1], self.min_samples)
        return subsample(x, self.max_samples, self.seed, 2)

    def score(self, x: Any) -> DriftScore:  # pragma: no cover - every detector overrides it
        raise NotImplementedError

    def predict(self, x: Any) -> DriftResult:
        """Score ``x`` and decide: drift when the p-value is below the level."""
        s = self.score(x)
        n_test = min(len(x), self.max_samples or len(x))
        return DriftResult(bool(s.p_val < self.p_val), float(s.p_val), self.p_val, float(s.distance),
                           float(s.distance_threshold), len(self.x_ref), n_test, self.name, s.detail)
