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

**Support.** A shift can move images to where the model is confidently wrong (a rotated or
inverted image that looks like another class): no confidence score sees that. Where the
embeddings are at hand, an image whose mean cosine distance to its ``SUPPORT_K`` nearest
training embeddings exceeds what ``support_quantile`` (95 %) of the held-out images have is
*outside the training support*, and counts at chance (1 / classes) instead of by its
confidence; the ATC threshold is fitted with the same rule, so that the estimate on the
held-out images still equals their accuracy. Without embeddings, the estimate is plain ATC.

**Regression on a shift panel** (``method="regression"``, the monitor's default). Some
shifts leave images near the training embeddings of *another* class, confidently wrong:
inside the support, above the threshold. What gives them away is the batch as a whole: the
predicted class mix moves, and a share of images lands beyond almost every held-out image.
So three batch features (ATC with the support rule, the share beyond the 99 % held-out
distance, and the distance between the batch's predicted class mix and the held-out one,
less what sampling adds) are regressed on the accuracy of sub-batches of the held-out images under a
panel of generic synthetic corruptions (``transferops.corruptions.PANEL``), where the labels
are known. This is AutoEval's idea (Deng & Zheng, CVPR 2021) with ATC as its main feature; it
reads the class mix, so a batch whose true classes really changed reads as a drop (the
monitor's BBSD test tells the two apart). Without a panel, the estimate is ATC.

Everything works on softmax outputs (the profile and the monitor keep those, not logits):
``log p`` differs from the logits by a per-row constant, which softmax ignores, so
``softmax(log p / T)`` is the temperature-scaled softmax. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from transferops.errors import InputError

Score = Literal["negative_entropy", "max_confidence"]
SCORES: tuple[str, ...] = ("negative_entropy", "max_confidence")
Method = Literal["regression", "atc", "average_confidence"]
METHODS: tuple[str, ...] = ("regression", "atc", "average_confidence")
_EPS = 1e-12
# Fewer labelled held-out images than this make the threshold too coarse to trust (1/n steps).
MIN_CALIBRATION = 20
# neighbours in the training profile whose mean distance places an image in or out of support
SUPPORT_K = 10
# the regression's batch features (after a constant), in order
FEATURES: tuple[str, ...] = ("atc", "far_share", "class_mix_shift")
# the "far" radius: beyond what this share of held-out images reach
FAR_QUANTILE = 0.99
# sub-batches drawn per panel entry, and their size, for the regression's rows
PANEL_DRAWS, PANEL_BATCH = 20, 300


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


def support_distances(embeddings: Any, reference: Any, k: int = SUPPORT_K) -> np.ndarray:
    """Per image: the mean cosine distance to its ``k`` nearest ``reference`` embeddings."""
    e, r = np.asarray(embeddings, dtype=np.float32), np.asarray(reference, dtype=np.float32)
    if e.ndim != 2 or r.ndim != 2 or e.shape[1] != r.shape[1] or not len(r):
        raise InputError(f"embeddings {e.shape} and reference {r.shape} must be 2-D with the same width; pass the "
                         "model's embeddings of the images and of its training profile")
    e = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    r = r / np.clip(np.linalg.norm(r, axis=1, keepdims=True), 1e-12, None)
    k = min(k, len(r))
    out = np.empty(len(e))
    for i in range(0, len(e), 2048):  # 2048 x 1000 similarities at a time: bounded memory
        sim = e[i:i + 2048] @ r.T
        out[i:i + 2048] = 1.0 - np.partition(sim, len(r) - k, axis=1)[:, -k:].mean(axis=1)
    return out


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
    # the support rule (module docstring); None: fitted without embeddings, plain ATC
    support_radius: float | None = None
    support_quantile: float | None = None
    # the regression (module docstring); None: fitted without a panel, ATC instead
    far_radius: float | None = None
    class_mix: tuple[float, ...] | None = None
    coefficients: tuple[float, ...] | None = None
    panel_size: int = 0  # corrupted held-out sets the regression saw

    def method_used(self, method: str | None = None, embeddings: Any = None) -> str:
        """What ``estimate`` computes for ``method``: ``regression`` needs a fitted panel and
        embeddings, ATC's support rule needs embeddings; the fallback is plain ATC."""
        method = method or self.method
        if method not in METHODS:
            raise InputError(f"unknown estimation method {method!r}; choose one of {', '.join(METHODS)}")
        has_support = self.support_radius is not None and embeddings is not None
        if method == "regression" and not (self.coefficients and has_support):
            method = "atc"
        return "atc_support" if method == "atc" and has_support else method

    def _atc(self, s: np.ndarray, inside: np.ndarray, classes: int) -> float:
        return float(((s > self.threshold) & inside).mean() + (~inside).mean() / classes)

    def features(self, probs: Any, embeddings: Any, reference: Any) -> dict[str, float]:
        """The regression's batch features (``FEATURES``) of unlabelled images."""
        p = _check_probs(probs, "probs")
        s = confidence_scores(p, self.temperature, self.score)  # type: ignore[arg-type]
        d = support_distances(embeddings, reference)
        return _batch_features(self, s, d, p.argmax(axis=1), p.shape[1])

    def estimate(self, probs: Any, method: str | None = None, embeddings: Any = None, reference: Any = None) -> float:
        """Estimated accuracy on unlabelled images: the shift-panel regression on the batch's
        features (with ``embeddings`` and the training ``reference`` embeddings), the share
        scoring above the threshold (ATC; with embeddings, images outside the support count at
        chance), or the mean temperature-scaled top probability (average confidence). A
        method that lacks what it needs falls back as ``method_used`` says."""
        used = self.method_used(method, None if reference is None else embeddings)
        if not len(np.asarray(probs)):
            raise InputError("no images to estimate the accuracy of; pass at least one image")
        if used == "average_confidence":
            return float(confidence_scores(probs, self.temperature, "max_confidence").mean())
        if used == "regression":
            f = self.features(probs, embeddings, reference)
            x = np.array([1.0] + [f[k] for k in FEATURES])
            return float(np.clip(x @ np.asarray(self.coefficients), 0.0, 1.0))
        s = confidence_scores(probs, self.temperature, self.score)  # type: ignore[arg-type]
        if used == "atc":
            return float((s > self.threshold).mean())
        inside = support_distances(embeddings, reference) <= self.support_radius
        return self._atc(s, inside, np.asarray(probs).shape[1])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        def opt(key: str, kind: Any = float) -> Any:
            v = d.get(key)
            return None if v is None else kind(v)

        def floats(v: Any) -> tuple[float, ...]:
            return tuple(float(x) for x in v)

        try:
            return cls(float(d["temperature"]), float(d["threshold"]), str(d["score"]),
                       float(d["heldout_accuracy"]), int(d["n"]), str(d.get("method", "atc")),
                       opt("support_radius"), opt("support_quantile"), opt("far_radius"),
                       opt("class_mix", floats), opt("coefficients", floats), int(d.get("panel_size", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"calibration record is incomplete ({exc}); retrain the model to rewrite it") from None


def fit_calibration(probs: Any, labels: Any, score: Score = "negative_entropy", method: Method = "atc",
                    min_images: int = MIN_CALIBRATION, embeddings: Any = None, reference: Any = None,
                    support_quantile: float = 0.95, panel: Sequence[tuple[Any, Any, Any]] = (),
                    seed: int = 0) -> Calibration:
    """Temperature, then the ATC threshold, from labelled held-out softmax outputs (and, with
    their ``embeddings`` and the training ``reference`` embeddings, the support radius).

    The threshold sits among the scores so that the held-out estimate equals the held-out
    accuracy: the share above it is the accuracy (plain ATC), or, with the support rule, the
    in-support share above it plus the out-of-support share at chance is.

    ``panel``: ``(probs, labels, embeddings)`` of the held-out images under synthetic shifts;
    with it (and embeddings), the regression is fitted too (module docstring).
    """
    p = _check_probs(probs, "held-out probs")
    y = np.asarray(labels, dtype=np.int64)
    if len(p) < min_images:
        raise InputError(f"{len(p)} labelled held-out images are too few to calibrate an accuracy estimate "
                         f"(at least {min_images}); add images to the val and test splits")
    if method not in METHODS:
        raise InputError(f"unknown estimation method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.5 <= support_quantile <= 1.0:
        raise InputError(f"support_quantile {support_quantile} must be in [0.5, 1]; 0.95 is the default")
    t = fit_temperature(p, y)
    s = confidence_scores(p, t, score)
    acc = float((p.argmax(axis=1) == y).mean())
    radius = None
    inside = np.ones(len(s), dtype=bool)
    if embeddings is not None and reference is not None:
        d = support_distances(embeddings, reference)
        radius = float(np.quantile(d, support_quantile))
        inside = d <= radius
    # above the threshold: the top `above` in-support scores (ties aside)
    order = np.sort(s[inside])
    above = int(round(acc * len(s) - (~inside).sum() / p.shape[1]))
    k = len(order) - min(max(above, 0), len(order))  # in-support images at or below the threshold
    if k <= 0:
        thr = float(order[0]) - 1.0
    elif k >= len(order):
        thr = float(order[-1])
    else:
        thr = float((order[k - 1] + order[k]) / 2)
    cal = Calibration(t, thr, score, acc, int(len(p)), method, radius,
                      None if radius is None else support_quantile)
    if radius is None or not panel:
        return cal
    return _fit_regression(cal, p, y, d, reference, panel, seed)


def _batch_features(cal: Calibration, s: np.ndarray, d: np.ndarray, pred: np.ndarray, classes: int) -> dict[str, float]:
    n = len(pred)
    mix = np.bincount(pred, minlength=classes) / max(n, 1)
    # squared distance of the class mixes less what sampling alone adds on average (unbiased for
    # a multinomial mix), so that a small batch of unshifted images does not read as a shift
    sq = float(((mix - np.asarray(cal.class_mix)) ** 2).sum() - (mix * (1 - mix)).sum() / max(n - 1, 1))
    return {"atc": cal._atc(s, d <= cal.support_radius, classes), "far_share": float((d > cal.far_radius).mean()),
            "class_mix_shift": float(np.sqrt(max(sq, 0.0)))}


def _fit_regression(cal: Calibration, p: np.ndarray, y: np.ndarray, d: np.ndarray, reference: Any,
                    panel: Sequence[tuple[Any, Any, Any]], seed: int) -> Calibration:
    """Ridge regression of sub-batch accuracy on the batch features, over the clean held-out
    images and each shifted copy of them."""
    k = p.shape[1]
    cal = replace(cal, far_radius=float(np.quantile(d, FAR_QUANTILE)),
                  class_mix=tuple(float(v) for v in np.bincount(p.argmax(axis=1), minlength=k) / len(p)))
    rng = np.random.default_rng(seed)
    rows, target = [], []
    sets = [(p, y, d)] + [(_check_probs(pp, "panel probs"), np.asarray(yy, dtype=np.int64),
                           support_distances(ee, reference)) for pp, yy, ee in panel]
    for i, (pp, yy, dd) in enumerate(sets):
        if pp.shape[1] != k or len(yy) != len(pp) or len(dd) != len(pp):
            raise InputError(f"panel entry {i - 1} has shape {pp.shape} with {len(yy)} labels and {len(dd)} embeddings; "
                             f"pass (probs, labels, embeddings) of the same images with {k} classes")
        s, pred = confidence_scores(pp, cal.temperature, cal.score), pp.argmax(axis=1)  # type: ignore[arg-type]
        # the clean images weigh as much as a few shifts: most batches are unshifted
        for _ in range(PANEL_DRAWS * (3 if i == 0 else 1)):
            j = rng.integers(0, len(pp), min(PANEL_BATCH, len(pp)))
            f = _batch_features(cal, s[j], dd[j], pred[j], k)
            rows.append([1.0] + [f[n] for n in FEATURES])
            target.append(float((pred[j] == yy[j]).mean()))
    x, t = np.asarray(rows), np.asarray(target)
    w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ t)  # a little ridge: the features correlate
    return replace(cal, coefficients=tuple(float(v) for v in w), panel_size=len(panel))
