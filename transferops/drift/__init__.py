"""Drift detection on backbone embeddings, with alibi-detect's contract.

Detectors (fit on a reference at construction; ``score`` then ``predict``):

* :class:`MMDDrift` - Gaussian-kernel MMD, permutation test (fast: reduced dimensions,
  random Fourier features, all permutations in one matrix product; shrunk whitening for power);
* :class:`ClassifierDrift` - domain-classifier AUC on a held-out half, exact Mann-Whitney p-value;
* :class:`KSDrift` - per-feature KS with a max-KS permutation, Bonferroni or FDR correction;
* :class:`LabelShiftDrift` - BBSD: KS on the model's softmax outputs, for monitoring.

``source_similarity`` is the [0, 1] score the strategy rule uses. Profiles (the stored
reference samples) are in :mod:`transferops.drift.profile`; the combined report in
:mod:`transferops.drift.report`. Nothing here imports orchestration or tracking code.
"""

from transferops.drift.base import MIN_SAMPLES, Detector, DriftInputError, DriftResult, DriftScore
from transferops.drift.classifier import (ClassifierDrift, domain_classifier_auc, similarity_from_auc,
                                          source_similarity)
from transferops.drift.mmd import MMDDrift, mmd2
from transferops.drift.univariate import KSDrift, LabelShiftDrift, bh_adjust

__all__ = ["MIN_SAMPLES", "ClassifierDrift", "Detector", "DriftInputError", "DriftResult", "DriftScore", "KSDrift",
           "LabelShiftDrift", "MMDDrift", "bh_adjust", "domain_classifier_auc", "mmd2", "similarity_from_auc",
           "source_similarity"]
