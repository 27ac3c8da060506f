"""Two-sample drift tests on backbone embeddings, with alibi-detect's contract.

A detector is fitted on a reference sample at construction; ``score(x)``
computes the statistic and its permutation p-value; ``predict(x)`` decides and
returns a :class:`DriftResult` with ``is_drift``, ``p_val``, ``threshold``
(the significance level) and ``distance`` (the statistic).

The similarity score used by the strategy choice is separate from the test:
``similarity = 2 * (1 - AUC)`` (clipped to [0, 1]) of a cross-validated logistic
regression that tries to tell reference from target embeddings. It reads
directly: 1 when a classifier cannot tell the domains apart (AUC 0.5), 0 when it
separates them perfectly, and it falls monotonically as the shift grows.

The MMD test uses a Gaussian kernel whose bandwidth is the median pairwise
distance of the pooled sample. The pooled kernel matrix is computed once; every
permutation is then a row of an indicator matrix, and all permutations' statistics
come out of one matrix product, with no per-permutation Python loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

MIN_SAMPLES = 5


class DriftInputError(ValueError):
    """Embeddings of the wrong shape, with NaNs, or too few of them."""


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DriftInputError(f"{name} must be a 2-D array (samples, features), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DriftInputError(f"{name} has {x.shape[1]} features but the reference has {dim}; embed both with the same backbone")
    if x.shape[0] < MIN_SAMPLES:
        raise DriftInputError(f"{name} has {x.shape[0]} samples; a two-sample test needs at least {MIN_SAMPLES}")
    if not np.isfinite(x).all():
        raise DriftInputError(f"{name} contains NaN or infinite values; check the images and the backbone")
    return x


class MMDDrift:
    """Kernel maximum mean discrepancy with a permutation test.

    >>> rng = np.random.default_rng(0)
    >>> det = MMDDrift(rng.normal(size=(200, 8)), n_permutations=100)
    >>> det.predict(rng.normal(size=(200, 8))).is_drift
    False
    """

    def __init__(self, x_ref: np.ndarray, *, p_val: float = 0.05, n_permutations: int = 200,
                 max_samples: int | None = 1000, sigma: float | None = None, seed: int = 0):
        if not 0 < p_val < 1:
            raise ValueError(f"p_val={p_val} must lie in (0, 1)")
        self.seed = seed
        self.max_samples = max_samples
        self.x_ref = self._subsample(_check(x_ref, "reference embeddings"), salt=1)
        self.p_val = p_val
        self.n_permutations = n_permutations
        self.sigma = sigma

    def _subsample(self, x: np.ndarray, salt: int) -> np.ndarray:
        if self.max_samples is None or len(x) <= self.max_samples:
            return x
        rng = np.random.default_rng([self.seed, salt])
        return x[np.sort(rng.choice(len(x), self.max_samples, replace=False))]

    def score(self, x: np.ndarray) -> tuple[float, float, float, float]:
        """(p-value, MMD^2, MMD^2 threshold at the level) of ``x`` against the reference."""
        x = self._subsample(_check(x, "test embeddings", self.x_ref.shape[1]), salt=2)
        z = torch.from_numpy(np.concatenate([self.x_ref, x])).double()
        n, m = len(self.x_ref), len(x)
        d2 = torch.cdist(z, z).pow(2)
        sigma = self.sigma
        if sigma is None:  # median heuristic, as alibi-detect's default
            sigma = float(d2[d2 > 0].median().sqrt()) if (d2 > 0).any() else 1.0
        k = torch.exp(-d2 / (2 * sigma**2))
        k.fill_diagonal_(0)  # the unbiased estimator skips i == j terms
        gen = torch.Generator().manual_seed(self.seed)
        perms = torch.stack([torch.randperm(n + m, generator=gen) for _ in range(self.n_permutations)])
        ind = torch.zeros(self.n_permutations + 1, n + m, dtype=torch.float64)
        ind[0, :n] = 1  # row 0 is the observed split
        ind[1:].scatter_(1, perms[:, :n], 1.0)
        stats = _mmd2_unbiased(k, ind, n, m)
        observed, null = float(stats[0]), stats[1:]
        p = float((1 + (null >= observed).sum()) / (1 + self.n_permutations))
        dist_threshold = float(torch.quantile(null, 1 - self.p_val))
        return p, observed, dist_threshold

    def predict(self, x: np.ndarray) -> DriftResult:
        """Score ``x`` and decide: drift when the p-value is below the level."""
        p, dist, dist_thr = self.score(x)
        n_test = min(len(x), self.max_samples or len(x))
        return DriftResult(p < self.p_val, p, self.p_val, dist, dist_thr, len(self.x_ref), n_test)


def _mmd2_unbiased(k: torch.Tensor, ind: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Unbiased MMD^2 for every row of ``ind`` (1 marks the first sample), one matmul for all."""
    total = k.sum()
    uk = ind @ k
    kxx = (uk * ind).sum(1)
    kxy = (uk * (1 - ind)).sum(1)
    kyy = total - kxx - 2 * kxy
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)


def domain_classifier_auc(x_ref: np.ndarray, x: np.ndarray, *, folds: int = 5, max_dim: int = 32,
                          max_samples: int | None = 1000, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a linear classifier separating ``x_ref`` from ``x``.

    Standardise, reduce to ``max_dim`` principal components (fitted inside each
    fold), logistic regression; every sample is scored by a model that never saw it.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = _check(x_ref, "reference embeddings")
    b = _check(x, "test embeddings", a.shape[1])
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        a = a[rng.permutation(len(a))[:max_samples]]
        b = b[rng.permutation(len(b))[:max_samples]]
    z = np.concatenate([a, b]).astype(np.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = max(2, min(folds, len(a), len(b)))
    dim = max(1, min(max_dim, z.shape[1], len(z) - len(z) // folds - 1))
    clf = make_pipeline(StandardScaler(), PCA(dim, random_state=seed), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, z, y, cv=cv, method="decision_function")
    return float(roc_auc_score(y, scores))


def similarity_from_auc(auc: float) -> float:
    """Map a domain-classifier AUC to a similarity in [0, 1]: 0.5 -> 1, 1.0 -> 0."""
    return float(np.clip(2.0 * (1.0 - auc), 0.0, 1.0))


def source_similarity(x_ref: np.ndarray, x: np.ndarray, *, max_samples: int | None = 1000, seed: int = 0) -> float:
    """How alike two embedding samples are, in [0, 1]; the strategy rule's similarity.

    >>> rng = np.random.default_rng(0)
    >>> round(source_similarity(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 3), 2)
    0.0
    """
    return similarity_from_auc(domain_classifier_auc(x_ref, x, max_samples=max_samples, seed=seed))
