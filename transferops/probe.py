"""Linear probes on frozen embeddings: the ``feature_extraction`` head and transferability scores.

A head on a frozen backbone only ever sees fixed vectors, so training it is multinomial logistic
regression: convex, with one optimum. Full-batch L-BFGS on cached embeddings reaches it in about
a second; SGD over image batches needs a learning rate, a schedule and epochs, and stops wherever
they leave it. The one choice left, the L2 strength, is made on held-out images. The ``auto``
rule asks how well the source features describe the target before anything is fine-tuned:
:func:`probe_accuracy` (against :func:`chance_accuracy`) and :func:`logme` answer from the same
embeddings. Pure numpy and torch on the CPU in float64, without prefect or mlflow: cheap to
import, and the same inputs and seed give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from transferops.errors import InputError

# Strengths of l2/2*||W||^2 added to the MEAN cross-entropy over standardised features, so a
# value means the same at 50 images as at 50,000. scikit-learn's default (C=1) is l2 = 1/n,
# 1e-2 at 100 images and 2e-4 at 5,000; 1.0 shrinks the head towards a nearest-class-mean rule.
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# probe_accuracy's strength when none is given: fixed rather than searched, so that scores of
# two sources differ by their features, not by how lucky each search was, at one fit per fold.
PROBE_L2 = 1e-2
# Below this many feature entries (32 MiB of float64) torch runs on one thread: the work is too
# small to split, and on a small machine torch's and numpy's BLAS threads contending for the
# same cores turned 0.1 s decompositions into 10 s ones. Above it, up to _MAX_THREADS.
_ONE_THREAD_BELOW, _MAX_THREADS = 1 << 22, 4
# L-BFGS stops when no gradient entry exceeds this. A head that is kept is fitted to FIT_TOL;
# fits that only score a strength (cross-validation folds, the strength search, probes) stop at
# SCORE_TOL: 4-8x faster, and on the demo's features every held-out accuracy and chosen
# strength came out the same, the flattest fit (l2 1e-4) aside, where 2 images of 421 moved.
FIT_TOL, SCORE_TOL = 1e-7, 1e-5


@dataclass(frozen=True)
class LinearHead:
    """A fitted head: ``logits = X @ weight.T + bias`` on raw (unstandardised) features."""

    weight: np.ndarray  # (n_classes, dim) float32
    bias: np.ndarray  # (n_classes,) float32
    l2: float  # the chosen strength
    score: float  # accuracy at that strength on validation images (or cross-validated)
    loss: float  # mean cross-entropy there
    selection: str  # how l2 was chosen, in words
    grid: list[dict]  # {"l2", "score", "loss"} for every candidate, weakest first

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), float64."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.weight.shape[1]:
            raise InputError(f"features have shape {X.shape} but the head expects (n, {self.weight.shape[1]}); "
                             "pass embeddings from the backbone the head was fitted on")
        z = X @ self.weight.T.astype(np.float64) + self.bias
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def as_dict(self) -> dict[str, Any]:
        """Everything but the weights, JSON-safe."""
        return {"l2": float(self.l2), "score": float(self.score), "loss": float(self.loss),
                "selection": self.selection, "n_classes": int(self.weight.shape[0]), "dim": int(self.weight.shape[1]),
                "grid": [{k: float(v) for k, v in row.items()} for row in self.grid]}


@contextmanager
def _threads(entries: int) -> Iterator[None]:
    # the setting is process-wide, so it is restored on the way out; a torch call running in
    # another Python thread meanwhile would run with it too
    before = torch.get_num_threads()
    torch.set_num_threads(1 if entries < _ONE_THREAD_BELOW else min(before, _MAX_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check(X: Any, y: Any, n_classes: int | None, what: str, *, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    # n_classes None: any non-negative integer labels (LogME takes no class count)
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (images x dims), got shape {X.shape}; stack the embeddings")
    if y.ndim != 1 or len(y) != len(X):
        raise InputError(f"{what} has {len(X)} images but labels of shape {y.shape}; pass one label per image")
    if len(X) < min_rows:
        raise InputError(f"{what} has {len(X)} images but at least {min_rows} are needed; add labelled images")
    if n_classes is not None and n_classes < 2:
        raise InputError(f"n_classes is {n_classes} but a classifier needs at least 2; check the class list")
    top = np.inf if n_classes is None else n_classes - 1
    if not (np.issubdtype(y.dtype, np.number) and np.all(y == np.round(y))
            and (not y.size or 0 <= y.min() <= y.max() <= top)):
        want = "non-negative integers" if n_classes is None else f"integers in 0..{top}"
        raise InputError(f"labels of {what} must be {want}, found {np.unique(y)[:8]}; map class names to indices first")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise InputError(f"{what} contain NaN or infinite values; re-extract the embeddings or drop those images")
    return X, y.astype(np.int64)


def fit_logistic(X: np.ndarray, y: np.ndarray, n_classes: int, l2: float, *, max_iter: int = 500,
                 init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch L-BFGS (strong Wolfe line search) to convergence.

    Minimises mean cross-entropy + ``l2``/2 * ||W||^2 with W acting on standardised features
    (mean/std of ``X``; bias unpenalised), so the penalty treats every embedding dimension
    alike whatever its scale. The standardisation is folded into the returned float64
    ``(weight, bias)``, which apply to raw ``X``. ``init`` (raw-feature weight and bias, e.g.
    the fit at a neighbouring ``l2``) only shortens the way to the same optimum. Deterministic.
    """
    X, y = _check(X, y, n_classes, "features")
    if not l2 > 0:
        raise InputError(f"l2 must be positive, got {l2}; without a penalty separable data has no optimum")
    if init is not None and (np.shape(init[0]) != (n_classes, X.shape[1]) or np.shape(init[1]) != (n_classes,)):
        raise InputError(f"init must be (weight {(n_classes, X.shape[1])}, bias ({n_classes},)); pass a previous fit")
    return _fit(X, y, n_classes, float(l2), max_iter, init)


def _fit(X: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int = 500,
         init: tuple[np.ndarray, np.ndarray] | None = None, tol: float = FIT_TOL) -> tuple[np.ndarray, np.ndarray]:
    # unchecked, so cross-validation folds of a single image work (the bias alone then fits)
    n, d = X.shape
    mu, sd = X.mean(axis=0), X.std(axis=0)
    # a constant column standardises to zeros whatever divides it; dividing by 1 keeps a new
    # image that differs there from being blown up by a near-zero std
    sd = np.where(sd > 1e-12 * (1.0 + np.abs(mu)), sd, 1.0)
    W0, b0 = (np.zeros((n_classes, d)), np.zeros(n_classes)) if init is None else (init[0] * sd, init[1] + init[0] @ mu)
    with _threads(n * d):
        Xs, basis = torch.from_numpy((X - mu) / sd), None
        if n < d:
            # the optimum lies in the span of the images (a weight orthogonal to all of them costs
            # penalty and moves no logit), so solve in those <= n coordinates: same optimum, less work
            lam, vecs = torch.linalg.eigh(Xs @ Xs.T)
            keep = lam > lam[-1].clamp(min=1e-300) * 1e-12
            basis = (Xs.T @ vecs[:, keep]) / lam[keep].sqrt()  # (d, rank), orthonormal columns
            Xs, W0 = Xs @ basis, W0 @ basis.numpy()
        k = Xs.shape[1]
        Xa = torch.cat([Xs, torch.ones(n, 1, dtype=torch.float64)], dim=1)
        XaT = Xa.T.contiguous()
        Y = torch.nn.functional.one_hot(torch.from_numpy(y), n_classes).double()
        # (features + bias) x classes, so that the gradient comes out contiguous as L-BFGS needs
        theta = torch.from_numpy(np.vstack([W0.T, b0[None, :]])).requires_grad_(True)
        mask = (torch.arange(k + 1) < k).double()[:, None]  # the bias goes unpenalised

        def closure() -> torch.Tensor:
            # gradient by hand: autograd's bookkeeping would cost more than the arithmetic
            with torch.no_grad():
                z = Xa @ theta
                loss = (torch.logsumexp(z, 1) - (z * Y).sum(1)).mean() + 0.5 * l2 * ((theta * mask) ** 2).sum()
                theta.grad = XaT @ ((torch.softmax(z, 1) - Y) / n) + l2 * theta * mask
            return loss

        torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                          tolerance_grad=tol, tolerance_change=1e-12, line_search_fn="strong_wolfe").step(closure)
        t = theta.detach().T
        w_std = (t[:, :k] if basis is None else t[:, :k] @ basis.T).numpy()
    weight = w_std / sd
    return weight, t[:, k].numpy() - weight @ mu


def _ce_acc(wb: tuple[np.ndarray, np.ndarray], X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # per image, so that folds pool image by image
    z = X @ wb[0].T + wb[1]
    top = z.max(1)
    return np.log(np.exp(z - top[:, None]).sum(1)) + top - z[np.arange(len(y)), y], (z.argmax(1) == y) * 1.0


def _cv_grid(X: np.ndarray, y: np.ndarray, n_classes: int, grid: list[float], folds: int,
             seed: int) -> tuple[list[dict], int]:
    counts = np.bincount(y)
    k = max(2, min(folds, int(counts[counts > 0].min())))
    # stratified: each class shuffled and dealt round-robin, starting where the last class
    # stopped so that fold sizes differ by one image at most
    rng, fold, start = np.random.default_rng(seed), np.empty(len(y), dtype=np.int64), 0
    for c in np.flatnonzero(counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)
    ce, acc = np.zeros((len(grid), len(y))), np.zeros((len(grid), len(y)))
    for f in range(k):
        tr, te, wb = fold != f, fold == f, None
        for i, l2 in enumerate(grid):
            wb = _fit(X[tr], y[tr], n_classes, l2, init=wb, tol=SCORE_TOL)
            ce[i, te], acc[i, te] = _ce_acc(wb, X[te], y[te])
    return [{"l2": l2, "score": float(acc[i].mean()), "loss": float(ce[i].mean())} for i, l2 in enumerate(grid)], k


def fit_linear_head(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                    n_classes: int, *, l2_grid: tuple[float, ...] = L2_GRID, min_val_per_class: int = 10,
                    folds: int = 5, seed: int = 0) -> LinearHead:
    """Fit the head, choosing ``l2`` from ``l2_grid`` by held-out accuracy (equal ones: the stronger l2).

    The validation split decides when it holds at least ``min_val_per_class`` images per class
    on average and every class that has labelled images; the head is then the fit on train.
    Otherwise so few validation images would make the choice a coin toss, so stratified
    ``folds``-fold CV over train+val decides (fewer folds when a class has fewer images, at
    least 2) and the head is refitted on train+val, leaving no labelled image unused.
    ``X_val`` may have 0 rows. Deterministic for a ``seed``.
    """
    X_train, y_train = _check(X_train, y_train, n_classes, "training features")
    if np.size(X_val) == 0 and np.size(y_val) == 0:  # no validation split at all, whatever its shape
        X_val, y_val = np.zeros((0, X_train.shape[1])), np.zeros(0, dtype=np.int64)
    X_val, y_val = _check(X_val, y_val, n_classes, "validation features", min_rows=0)
    if X_val.shape[1] != X_train.shape[1]:
        raise InputError(f"validation features have {X_val.shape[1]} dims but training features "
                         f"{X_train.shape[1]}; extract both with the same backbone")
    grid = sorted({float(v) for v in l2_grid}, reverse=True)  # strongest first: max() keeps the first of equals
    if not grid or grid[-1] <= 0:
        raise InputError(f"l2_grid must hold positive strengths, got {l2_grid}; use e.g. L2_GRID")
    missing = np.setdiff1d(y_train, y_val)
    n_val = len(y_val)
    if n_val >= min_val_per_class * len(np.union1d(y_train, y_val)) and not missing.size:
        fits, rows = [], []
        for l2 in grid:
            fits.append(_fit(X_train, y_train, n_classes, l2, init=fits[-1] if fits else None, tol=SCORE_TOL))
            ce, acc = _ce_acc(fits[-1], X_val, y_val)
            rows.append({"l2": l2, "score": float(acc.mean()), "loss": float(ce.mean())})
        i = max(range(len(rows)), key=lambda j: rows[j]["score"])
        # the kept head is fitted to full precision, from the search's fit, and its row re-scored
        weight, bias = _fit(X_train, y_train, n_classes, grid[i], init=fits[i])
        ce, acc = _ce_acc((weight, bias), X_val, y_val)
        best = rows[i] = {"l2": grid[i], "score": float(acc.mean()), "loss": float(ce.mean())}
        selection = f"validation split ({n_val} images)"
    else:
        why = ("no validation split" if n_val == 0 else
               f"validation split has no images of class {', '.join(map(str, missing[:5]))}" if missing.size else
               f"validation split too small ({n_val} images, under {min_val_per_class} per class)")
        X_all, y_all = np.vstack([X_train, X_val]), np.concatenate([y_train, y_val])
        rows, k = _cv_grid(X_all, y_all, n_classes, grid, folds, seed)
        best = max(rows, key=lambda r: r["score"])
        weight, bias = _fit(X_all, y_all, n_classes, best["l2"])
        selection = f"{k}-fold CV over train+val ({len(y_all)} images): {why}"
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32), best["l2"], best["score"],
                      best["loss"], selection, rows[::-1])


def probe_accuracy(X: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = 5, l2: float | None = None,
                   seed: int = 0) -> float:
    """Cross-validated accuracy of a linear head on these features: how linearly they separate the classes.

    Stratified ``folds``-fold CV (fewer when a class has fewer images, at least 2), pooled over
    all images. ``l2=None`` means the fixed :data:`PROBE_L2`, not a search, so that the scores
    of different sources differ by their features alone. Read it against
    :func:`chance_accuracy`. Deterministic for a ``seed``.
    """
    X, y = _check(X, y, n_classes, "features")
    if l2 is not None and not l2 > 0:
        raise InputError(f"l2 must be positive, got {l2}; leave it None for the default {PROBE_L2:g}")
    return _cv_grid(X, y, n_classes, [PROBE_L2 if l2 is None else float(l2)], folds, seed)[0][0]["score"]


def chance_accuracy(y: np.ndarray, n_classes: int) -> float:
    """Accuracy of always predicting the most frequent class: the floor a probe score is read against."""
    _, y = _check(np.zeros((len(np.atleast_1d(y)), 1)), y, n_classes, "labels", min_rows=1)
    return float(np.bincount(y, minlength=n_classes).max() / len(y))


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): how well the features explain the labels, without training.

    Per class present, a Bayesian linear model of the one-hot target gets its prior and noise
    precisions by the paper's fixed-point iteration on the SVD of the raw features; the log
    maximum evidence per image, averaged over the classes, is the score (higher: the features
    transfer better). Follows ``LogME._fit_fixed_point`` of github.com/thuml/LogME and its
    constants (the 1e-5 guards make it slightly scale-dependent), except that it iterates to
    convergence and, as its issue #23 asks, log|A| also counts the D - rank zero eigenvalues.
    """
    f, y = _check(features, labels, None, "features")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise InputError(f"labels hold only class {classes[0]}; LogME needs images of at least 2 classes")
    n, d = f.shape
    with _threads(n * d):
        ft = torch.from_numpy(f)
        # the SVD through the smaller Gram matrix, far cheaper than decomposing n x d directly
        evals, v = torch.linalg.eigh(ft.T @ ft if n > d else ft @ ft.T)
        keep = evals > evals[-1].clamp(min=1e-300) * 1e-10  # squared singular values; rank by this
        sigma = evals[keep]
        u = ft @ v[:, keep] / sigma.sqrt() if n > d else v[:, keep]
        onehot = torch.nn.functional.one_hot(torch.from_numpy(np.searchsorted(classes, y))).double()
        proj2 = ((u.T @ onehot) ** 2).numpy()  # each target's energy along the features' principal axes
    sigma = sigma.numpy()[:, None]
    res_x2 = np.maximum(counts - proj2.sum(0), 0.0)  # each target's part outside the features' span
    alpha, beta, active = np.ones(len(classes)), np.ones(len(classes)), np.ones(len(classes), dtype=bool)
    # iterate to the fixed point: the reference stops after 11 steps, which with fewer images than
    # dims and a weak signal can leave the evidence 0.03 per image short of its maximum
    for _ in range(1000):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)
        m2 = (sigma * proj2 / (t + sigma) ** 2).sum(0)
        res2 = (proj2 / (1 + sigma / t) ** 2).sum(0) + res_x2
        alpha = np.where(active, gamma / (m2 + 1e-5), alpha)
        beta = np.where(active, (n - gamma) / (res2 + 1e-5), beta)
        active &= np.abs(alpha / beta - t) > 1e-7 * t
        if not active.any():
            break
    log_det = np.log(alpha + beta * sigma).sum(0) + (d - len(sigma)) * np.log(alpha)
    evidence = (d * np.log(alpha) + n * np.log(beta) - log_det - beta * res2 - alpha * m2 - n * np.log(2 * np.pi)) / 2
    return float(np.mean(evidence / n))
