"""Classifier two-sample test and the similarity score used by the strategy choice.

A linear classifier (standardise, PCA to 32 dimensions, logistic regression) tries to tell reference from
test embeddings. Two numbers come out of it, for two jobs:

* **The test** (Lopez-Paz & Oquab, ICLR 2017): the classifier is fitted on a random,
  stratified half of the pooled sample and scores the other half. Under no drift the
  held-out scores of both samples are exchangeable given the fitted model, so the
  one-sided Mann-Whitney U test on them is exact; ``distance`` is their ROC AUC (U / nm).
  Pooling cross-fitted (out-of-fold) scores instead and testing those gives too many
  false alarms (0.09 to 0.12 at alpha 0.05 in ``bench/drift``): every fold's model saw
  the other folds' points, so the scores are not independent.
* **The similarity** is an estimate, not a test, so it uses every point: the ROC AUC of
  5-fold out-of-fold scores, mapped to ``similarity = 2 * (1 - AUC)`` clipped to [0, 1].
  It reads directly: 1 when a classifier cannot tell the domains apart (AUC 0.5), 0 when
  it separates them perfectly, and it falls monotonically as the shift grows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferops.drift.base import Detector, DriftScore, check_embeddings, subsample


def pooled_features(a: np.ndarray, b: np.ndarray, max_dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(z, y): ``a`` (y = 0) and ``b`` (y = 1) pooled, standardised and reduced to ``max_dim`` principal components.

    Standardisation and PCA are fitted once on the pooled sample *without labels* (the
    fast randomised PCA the MMD test uses), so every later fit is a logistic regression
    on ``max_dim`` columns. Label-free preprocessing treats both samples alike, so the
    held-out test below stays exact.
    """
    import torch

    from transferops.drift.mmd import reduce_dims

    z = np.concatenate([a, b]).astype(np.float32)
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-6)
    with torch.inference_mode():
        z = reduce_dims([torch.from_numpy(z)], max_dim, torch.Generator().manual_seed(seed)).double().numpy()
    return z / np.maximum(z.std(0), 1e-12), np.r_[np.zeros(len(a)), np.ones(len(b))]


def _classifier():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


def out_of_fold_scores(a: np.ndarray, b: np.ndarray, *, folds: int = 5, max_dim: int = 32,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels): cross-validated decision scores of a classifier of ``a`` (0) versus ``b`` (1)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    z, y = pooled_features(a, b, max_dim, seed)
    cv = StratifiedKFold(max(2, min(folds, len(a), len(b))), shuffle=True, random_state=seed)
    return cross_val_predict(_classifier(), z, y, cv=cv, method="decision_function"), y


class ClassifierDrift(Detector):
    """Domain-classifier two-sample test: drift when the held-out AUC is significantly above 0.5.

    ``distance`` is the held-out AUC; ``detail`` adds the 5-fold cross-fitted ``auc`` and
    ``similarity = 2 * (1 - auc)``.
    """

    name = "classifier"

    def __init__(self, x_ref: Any, *, p_val: float = 0.05, folds: int = 5, max_dim: int = 32,
                 test_fraction: float = 0.5, max_samples: int | None = None, seed: int = 0):
        super().__init__(x_ref, p_val=p_val, max_samples=max_samples, seed=seed)
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction={test_fraction} must lie in (0, 1)")
        self.folds, self.max_dim, self.test_fraction = folds, max_dim, test_fraction

    def score(self, x: Any) -> DriftScore:
        from scipy.stats import mannwhitneyu
        from sklearn.model_selection import train_test_split

        x = self._test_sample(x)
        z, y = pooled_features(self.x_ref, x, self.max_dim, self.seed)
        z_fit, z_held, y_fit, y_held = train_test_split(z, y, test_size=self.test_fraction, stratify=y,
                                                        random_state=self.seed)
        scores = _classifier().fit(z_fit, y_fit).decision_function(z_held)
        test = mannwhitneyu(scores[y_held == 1], scores[y_held == 0], alternative="greater")
        held_auc = float(test.statistic) / ((y_held == 1).sum() * (y_held == 0).sum())
        oof, labels = out_of_fold_scores(self.x_ref, x, folds=self.folds, max_dim=self.max_dim, seed=self.seed)
        auc = roc_auc(oof, labels)
        return DriftScore(float(test.pvalue), held_auc, float("nan"),
                          {"auc": auc, "similarity": similarity_from_auc(auc)})


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``labels`` == 1 (ties count half), via the rank-sum identity."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((rankdata(scores)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def domain_classifier_auc(x_ref: np.ndarray, x: np.ndarray, *, folds: int = 5, max_dim: int = 32,
                          max_samples: int | None = 1000, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a linear classifier separating ``x_ref`` from ``x``."""
    a = subsample(check_embeddings(x_ref, "reference embeddings"), max_samples, seed, 1)
    b = subsample(check_embeddings(x, "test embeddings", a.shape[1]), max_samples, seed, 2)
    scores, labels = out_of_fold_scores(a, b, folds=folds, max_dim=max_dim, seed=seed)
    return roc_auc(scores, labels)


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
