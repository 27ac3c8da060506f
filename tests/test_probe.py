"""The convex head and the transferability scores of ``transferops.probe``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from transferops.errors import InputError
from transferops.probe import (
    L2_GRID,
    LinearHead,
    chance_accuracy,
    fit_linear_head,
    fit_logistic,
    logme,
    probe_accuracy,
)


def _blobs(n: int, d: int, n_classes: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.normal(size=(n_classes, d)) * sep
    return centres[y] + rng.normal(size=(n, d)), y


def _logits(wb: tuple[np.ndarray, np.ndarray], X: np.ndarray) -> np.ndarray:
    return X @ wb[0].T + wb[1]


def _softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# --------------------------------------------------------------------------- fit_logistic
def test_fit_recovers_a_separable_problem():
    X, y = _blobs(300, 16, 4, sep=4.0, seed=0)
    X = X * 50 + 1000  # raw embeddings far from unit scale: the inner standardisation copes
    wb = fit_logistic(X[:200], y[:200], 4, 1e-3)
    assert wb[0].shape == (4, 16) and wb[1].shape == (4,)
    assert (_logits(wb, X[:200]).argmax(1) == y[:200]).mean() == 1.0
    assert (_logits(wb, X[200:]).argmax(1) == y[200:]).mean() >= 0.99


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_fit_matches_scikit_learn(l2):
    rng = np.random.default_rng(1)
    n, d = 240, 12
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + rng.normal(size=d)
    y = (X[:, :3] / X[:, :3].std(0) + rng.normal(size=(n, 3)) * 1.5).argmax(1)  # overlapping classes
    wb = fit_logistic(X, y, 3, l2)
    Xs = (X - X.mean(0)) / X.std(0)  # the standardisation fit_logistic penalises in
    ref = LogisticRegression(C=1 / (l2 * n), tol=1e-12, max_iter=10_000).fit(Xs, y)
    ours = _softmax(_logits(wb, X))
    np.testing.assert_allclose(ours, ref.predict_proba(Xs), atol=1e-5)
    assert (ours.argmax(1) == ref.predict(Xs)).all()


def test_folded_standardisation_gives_the_logits_of_standardising_first():
    X, y = _blobs(150, 20, 3, sep=0.7, seed=2)
    X = X * np.linspace(0.01, 100, 20) - 7
    Xs = (X - X.mean(0)) / X.std(0)
    raw, pre = fit_logistic(X, y, 3, 1e-2), fit_logistic(Xs, y, 3, 1e-2)
    np.testing.assert_allclose(_logits(raw, X), _logits(pre, Xs), atol=1e-6)
    # the wide case (more dims than images) is solved in the images' span: same optimum
    Xw, yw = _blobs(30, 200, 3, sep=0.3, seed=3)
    Xws = (Xw - Xw.mean(0)) / Xw.std(0)
    np.testing.assert_allclose(_logits(fit_logistic(Xw, yw, 3, 1e-2), Xw),
                               _logits(fit_logistic(Xws, yw, 3, 1e-2), Xws), atol=1e-6)


def test_fit_is_deterministic_handles_constant_columns_and_restores_threads():
    X, y = _blobs(80, 10, 2, sep=1.0, seed=4)
    X[:, 3] = 5.0  # a dead embedding dimension
    threads = torch.get_num_threads()
    a, b = fit_logistic(X, y, 2, 1e-2), fit_logistic(X, y, 2, 1e-2)
    assert torch.get_num_threads() == threads
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.isfinite(a[0]).all() and a[0][:, 3].tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- fit_linear_head
def test_head_uses_the_validation_split_when_it_is_big_enough():
    X, y = _blobs(400, 10, 4, sep=1.0, seed=5)
    head = fit_linear_head(X[:300], y[:300], X[300:], y[300:], 4)
    assert isinstance(head, LinearHead)
    assert head.selection == "validation split (100 images)"
    assert [r["l2"] for r in head.grid] == sorted(L2_GRID)
    best = max(r["score"] for r in head.grid)
    assert head.score == best and head.l2 == max(r["l2"] for r in head.grid if r["score"] == best)
    # fitted on train only, so the validation accuracy it reports is the head's own
    p = head.predict_proba(X[300:])
    assert p.shape == (100, 4) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y[300:]).mean() == pytest.approx(head.score)
    # the search's fits stop early (SCORE_TOL); the kept head is the full-precision fit
    np.testing.assert_allclose(head.weight, fit_logistic(X[:300], y[:300], 4, head.l2)[0], rtol=1e-4, atol=1e-5)
    assert head.weight.dtype == np.float32 and head.bias.dtype == np.float32
    json.dumps(head.as_dict())
    assert "weight" not in head.as_dict()


def test_head_falls_back_to_cv_over_train_and_val_when_val_is_tiny():
    X, y = _blobs(100, 10, 5, sep=1.0, seed=6)
    head = fit_linear_head(X[:85], y[:85], X[85:], y[85:], 5)
    assert head.selection == ("5-fold CV over train+val (100 images): "
                              "validation split too small (15 images, under 10 per class)")
    # refitted on every labelled image at the chosen strength
    refit = fit_logistic(X, y, 5, head.l2)
    np.testing.assert_allclose(head.weight, refit[0], rtol=1e-5, atol=1e-6)

    empty = fit_linear_head(X, y, np.zeros((0, 10)), np.zeros(0), 5)
    assert empty.selection.endswith(": no validation split")
    missing = fit_linear_head(X[:60], y[:60], X[60:][y[60:] != 2], y[60:][y[60:] != 2], 5, min_val_per_class=1)
    assert missing.selection.endswith("validation split has no images of class 2")
    few = fit_linear_head(X[:12], y[:12], X[12:13], y[12:13], 5)  # 2-3 images per class
    assert few.selection.startswith("2-fold CV over train+val (13 images)")


def test_head_is_deterministic_for_a_seed():
    X, y = _blobs(60, 8, 3, sep=0.8, seed=7)
    a, b = (fit_linear_head(X[:50], y[:50], X[50:], y[50:], 3, seed=1) for _ in range(2))
    assert a.as_dict() == b.as_dict() and np.array_equal(a.weight, b.weight)


def test_ties_go_to_the_stronger_penalty():
    X, y = _blobs(200, 5, 2, sep=10.0, seed=8)
    head = fit_linear_head(X[:100], y[:100], X[100:], y[100:], 2)
    assert all(r["score"] == 1.0 for r in head.grid)
    assert head.l2 == max(L2_GRID)


def test_stronger_penalty_chosen_for_a_tiny_noisy_problem_than_a_large_clean_one():
    rng = np.random.default_rng(0)
    # large and clean: correlated features and a linear rule that a shrunken, nearest-mean-like
    # head gets wrong, so only a weak penalty scores well
    A = rng.normal(size=(20, 20))
    X = rng.normal(size=(1500, 20)) @ A
    y = (X @ np.linalg.pinv(A).T @ rng.normal(size=(20, 3))).argmax(1)
    clean = fit_linear_head(X[:1000], y[:1000], X[1000:], y[1000:], 3)
    # tiny and noisy: 40 images in 40 dims, four overlapping classes; near as many dims as
    # images, a weakly penalised head fits the noise. Three draws, so no single one decides.
    chosen = []
    for seed in range(3):
        r = np.random.default_rng(seed)
        yn = np.arange(40) % 4
        Xn = r.normal(size=(40, 40)) + r.normal(size=(4, 40))[yn] * 0.4
        noisy = fit_linear_head(Xn[:34], yn[:34], Xn[34:], yn[34:], 4)
        assert noisy.selection.startswith("5-fold CV")
        chosen.append(noisy.l2)
    assert clean.selection.startswith("validation split") and clean.score > 0.95
    assert sorted(chosen)[1] > clean.l2


# --------------------------------------------------------------------------- probe accuracy
def test_probe_accuracy_reads_separable_features_high_and_random_labels_near_chance():
    X, y = _blobs(200, 32, 4, sep=3.0, seed=9)
    assert probe_accuracy(X, y, 4) >= 0.97
    y_random = np.random.default_rng(10).integers(0, 4, 200)
    chance = chance_accuracy(y_random, 4)
    score = probe_accuracy(X, y_random, 4)
    assert abs(score - chance) < 0.12
    assert score == probe_accuracy(X, y_random, 4)  # same seed, same number
    assert probe_accuracy(X, y, 4, l2=1.0, folds=3, seed=2) >= 0.97


def test_chance_accuracy_is_the_majority_share():
    assert chance_accuracy(np.array([0, 0, 0, 1, 2, 2]), 4) == 0.5
    assert chance_accuracy(np.array([3]), 4) == 1.0


# --------------------------------------------------------------------------- LogME
def _logme_icml(f: np.ndarray, y: np.ndarray) -> float:
    # the paper's Algorithm 1 (LogME._fit_icml / each_evidence in the reference code): the
    # D x D eigendecomposition of F^T F, so every eigenvalue, the zero ones too, counts in log|A|
    n, d = f.shape
    v, s, _ = np.linalg.svd(f.T @ f)
    out = []
    for c in range(int(y.max()) + 1):
        t = (y == c).astype(np.float64)
        alpha, beta, lam = 1.0, 1.0, 1.0
        tmp = v.T @ (f.T @ t)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (tmp * beta / (alpha + beta * s))
            alpha_de, beta_de = (m * m).sum(), ((t - f @ m) ** 2).sum()
            alpha, beta = gamma / (alpha_de + 1e-5), (n - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * s).sum()
              - beta / 2 * (beta_de + 1e-5) - alpha / 2 * (alpha_de + 1e-5) - n / 2 * np.log(2 * np.pi))
        out.append(ev / n)
    return float(np.mean(out))


def _log_max_evidence(f: np.ndarray, y: np.ndarray) -> float:
    # the definition itself: the target ~ N(0, F F^T / alpha + I / beta), its log density
    # maximised over alpha and beta by a generic optimiser (in the eigenbasis of F F^T, where
    # that covariance is diagonal)
    n = len(y)
    e, q = np.linalg.eigh(f @ f.T)
    e = np.clip(e, 0.0, None)
    out = []
    for c in range(int(y.max()) + 1):
        z2 = (q.T @ (y == c).astype(np.float64)) ** 2

        def neg(p: np.ndarray, z2: np.ndarray = z2) -> float:
            var = e * np.exp(-p[0]) + np.exp(-p[1])
            return 0.5 * (np.log(var).sum() + (z2 / var).sum() + n * np.log(2 * np.pi))

        out.append(-minimize(neg, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10}).fun / n)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d", [(120, 10), (40, 90)])  # more images than dims, and fewer
def test_logme_is_the_log_maximum_evidence(n, d):
    rng = np.random.default_rng(11)
    y = np.arange(n) % 3
    f = rng.normal(size=(n, d))
    f[:, :2] += y[:, None] * 0.7
    assert logme(f, y) == pytest.approx(_log_max_evidence(f, y), abs=1e-3)


def test_logme_matches_the_reference_algorithm_where_it_converges():
    rng = np.random.default_rng(14)
    y = np.arange(200) % 4
    f = np.eye(4)[y] @ rng.normal(size=(4, 16)) + rng.normal(size=(200, 16))
    assert logme(f, y) == pytest.approx(_logme_icml(f, y), abs=1e-3)
    # the reference stops after 11 steps; with fewer images than dims that can be far short
    # of the maximum, which logme reaches
    f, y = f[:40], y[:40]
    wide = np.hstack([f, rng.normal(size=(40, 80))])
    assert logme(wide, y) == pytest.approx(_log_max_evidence(wide, y), abs=1e-3)


def test_logme_prefers_informative_features_and_ignores_order():
    rng = np.random.default_rng(12)
    y = np.arange(300) % 5
    informative = np.eye(5)[y] @ rng.normal(size=(5, 64)) + rng.normal(size=(300, 64)) * 0.5
    random = rng.normal(size=(300, 64))
    assert logme(informative, y) > logme(random, y) + 0.1
    perm = rng.permutation(300)
    assert logme(informative[perm], y[perm]) == pytest.approx(logme(informative, y), abs=1e-10)


# --------------------------------------------------------------------------- bad inputs
_X, _Y = _blobs(20, 4, 2, sep=1.0, seed=13)
_NAN = _X.copy()
_NAN[3, 1] = np.nan

_BAD = {
    "lengths": (_X, _Y[:-1]),
    "label above n_classes": (_X, np.where(_Y == 1, 2, 0)),
    "negative label": (_X, -_Y),
    "fractional label": (_X, _Y + 0.5),
    "NaN feature": (_NAN, _Y),
    "one image": (_X[:1], _Y[:1]),
    "1-D features": (_X[:, 0], _Y),
}
_CALLS = {
    "fit_logistic": lambda X, y: fit_logistic(X, y, 2, 1e-2),
    "fit_linear_head": lambda X, y: fit_linear_head(X, y, np.zeros((0, 4)), [], 2),
    "fit_linear_head (val)": lambda X, y: fit_linear_head(_X, _Y, X, y, 2),
    "probe_accuracy": lambda X, y: probe_accuracy(X, y, 2),
    "logme": lambda X, y: logme(X, y),
}


# Not misuse: LogME takes no class count (any non-negative integer label is a class), and a
# validation split may hold a single image.
_ALLOWED = {("logme", "label above n_classes"), ("fit_linear_head (val)", "one image")}


@pytest.mark.parametrize(("call", "case"), [(c, b) for c in _CALLS for b in _BAD if (c, b) not in _ALLOWED])
def test_bad_inputs_raise_input_error(call, case):
    with pytest.raises(InputError) as err:
        _CALLS[call](*_BAD[case])
    assert "\n" not in str(err.value) and ";" in str(err.value)  # one line: what is wrong; what to do


@pytest.mark.parametrize("call", [
    lambda: fit_logistic(_X, _Y, 2, 0.0),
    lambda: fit_logistic(_X, _Y, 1, 1e-2),
    lambda: fit_logistic(_X, _Y, 2, 1e-2, init=(np.zeros((2, 3)), np.zeros(2))),
    lambda: fit_linear_head(_X, _Y, _X[:, :3], _Y, 2),
    lambda: fit_linear_head(_X, _Y, _X, _Y, 2, l2_grid=(-1.0,)),
    lambda: logme(_X, np.zeros(20, dtype=int)),
    lambda: chance_accuracy(np.array([0, 5]), 2),
    lambda: LinearHead(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), 1.0, 1.0, 0.0, "", [])
    .predict_proba(_X[:, :3]),
])
def test_other_misuse_raises_input_error(call):
    with pytest.raises(InputError):
        call()
