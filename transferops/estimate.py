"""Accuracy without labels: temperature scaling, then average confidence or average
thresholded confidence (ATC).

Average confidence (AC) is the mean of the temperature-scaled maximum softmax: exact for a
model that stays calibrated on the new data, optimistic for one that grows overconfident
under shift.

ATC (Garg et al., ICLR 2022) picks a confidence threshold on labelled held-out data such that
the share of images scoring above it equals the model's accuracy there; on unlabelled data the
estimated accuracy is the share scoring above the same threshold. The score is the negative
entropy of the temperature-scaled softmax (ATC-NE, the paper's better variant); temperature
scaling (Guo et al., ICML 2017) first makes the confidences mean what they say.

Everything works on softmax outputs (the profile and the monitor keep those, not logits):
``log p`` differs from the logits by a per-row constant, which softmax ignores, so
``softmax(log p / T)`` is the temperature-scaled softmax. Pure numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from transferops.errors import InputError

Score = Literal["negative_entropy", "max_confidence"]
SCORES: tuple[str, ...] = ("negative_entropy", "max_confidence")
Method = Literal["atc", "average_confidence"]
METHODS: tuple[str, ...] = ("atc", "average_confidence")
_EPS = 1e-12
# Fewer labelled held-out images than this make the threshold too coarse to trust (1/n steps).
MIN_CALIBRATION = 20


def _check_probs(probs: Any, name: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"{name} must be a 2-D array (images, classes) with at least 2 classes, got shape {p.shape}; "
                         "pass the model's softmax outputs")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InputError(f"{name} holds negative, NaN or infinite values; pass softmax outputs")
    return p


def scaled_log_probs(probs: Any, temperature: float) -> np.ndarray:
    """``log softmax(log p / T)``, row by row."""
    z = np.log(np.clip(_check_probs(probs, "probs"), _EPS, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(probs: Any, labels: Any, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (golden-section
    search on log T: the NLL is smooth and unimodal in it)."""
    y = np.asarray(labels, dtype=np.int64)
    p = _check_probs(probs, "probs")
    if y.shape != (len(p),) or (y < 0).any() or (y >= p.shape[1]).any():
        raise InputError(f"labels must be {len(p)} class indices in [0, {p.shape[1]}); got shape {y.shape}; "
                         "pass one label per row of probs")

    def nll(log_t: float) -> float:
        return float(-scaled_log_probs(p, float(np.exp(log_t)))[np.arange(len(y)), y].mean())

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # the bracket shrinks by 0.618 a step: 60 steps reach 1e-12 of log T
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def confidence_scores(probs: Any, temperature: float = 1.0, score: Score = "negative_entropy") -> np.ndarray:
    """Per-image confidence: negative entropy or maximum of the temperature-scaled softmax."""
    if score not in SCORES:
        raise InputError(f"unknown confidence score {score!r}; choose one of {', '.join(SCORES)}")
    logp = scaled_log_probs(probs, temperature)
    if score == "max_confidence":
        return np.exp(logp.max(axis=1))
    return (np.exp(logp) * logp).sum(axis=1)


@dataclass(frozen=True)
class Calibration:
    """What the monitor needs to estimate accuracy: stored beside a model, fitted on its
    labelled held-out images."""

    temperature: float
    threshold: float
    score: str
    heldout_accuracy: float
    n: int
    method: str = "atc"

    def estimate(self, probs: Any, method: str | None = None) -> float:
        """Estimated accuracy on unlabelled images: the share scoring above the threshold (ATC),
        or the mean temperature-scaled top probability (average confidence)."""
        method = method or self.method
        if method not in METHODS:
            raise InputError(f"unknown estimation method {method!r}; choose one of {', '.join(METHODS)}")
        if not len(np.asarray(probs)):
            raise InputError("no images to estimate the accuracy of; pass at least one image")
        if method == "average_confidence":
            return float(confidence_scores(probs, self.temperature, "max_confidence").mean())
        s = confidence_scores(probs, self.temperature, self.score)  # type: ignore[arg-type]
        return float((s > self.threshold).mean())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        try:
            return cls(float(d["temperature"]), float(d["threshold"]), str(d["score"]),
                       float(d["heldout_accuracy"]), int(d["n"]), str(d.get("method", "atc")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"calibration record is incomplete ({exc}); retrain the model to rewrite it") from None


def fit_calibration(probs: Any, labels: Any, score: Score = "negative_entropy", method: Method = "atc",
                    min_images: int = MIN_CALIBRATION) -> Calibration:
    """Temperature, then the ATC threshold, from labelled held-out softmax outputs.

    The threshold sits at the error rate's quantile of the scores, so that the share of
    held-out images above it equals the held-out accuracy.
    """
    p = _check_probs(probs, "held-out probs")
    y = np.asarray(labels, dtype=np.int64)
    if len(p) < min_images:
        raise InputError(f"{len(p)} labelled held-out images are too few to calibrate an accuracy estimate "
                         f"(at least {min_images}); add images to the val and test splits")
    t = fit_temperature(p, y)
    s = confidence_scores(p, t, score)
    correct = p.argmax(axis=1) == y
    acc = float(correct.mean())
    # above the threshold: exactly the top round(acc * n) scores (ties aside)
    order = np.sort(s)
    k = len(s) - int(round(acc * len(s)))  # images at or below the threshold
    if k <= 0:
        thr = float(order[0]) - 1.0
    elif k >= len(s):
        thr = float(order[-1])
    else:
        thr = float((order[k - 1] + order[k]) / 2)
    if method not in METHODS:
        raise InputError(f"unknown estimation method {method!r}; choose one of {', '.join(METHODS)}")
    return Calibration(t, thr, score, acc, int(len(p)), method)
