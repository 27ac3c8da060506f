"""Accuracy without labels: temperature scaling and ATC on synthetic, calibrated models."""

import numpy as np
import pytest

from transferops.errors import InputError
from transferops.estimate import Calibration, confidence_scores, fit_calibration, fit_temperature, support_distances


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _model(n, scale, seed, k=5, true_t=2.0):
    """A model's softmax outputs (at T=1) and labels drawn from softmax(logits / true_t): the
    model is overconfident by the factor true_t, and ``scale`` sets how hard the images are."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, k))
    y = np.array([rng.choice(k, p=p) for p in _softmax(z / true_t)])
    return _softmax(z), y


def test_temperature_recovers_the_overconfidence():
    p, y = _model(4000, 4.0, 0, true_t=2.0)
    assert fit_temperature(p, y) == pytest.approx(2.0, rel=0.1)
    p, y = _model(4000, 4.0, 1, true_t=0.7)
    assert fit_temperature(p, y) == pytest.approx(0.7, rel=0.1)


def test_atc_reproduces_the_heldout_accuracy_and_falls_on_a_harder_batch():
    p, y = _model(2000, 5.0, 2)
    cal = fit_calibration(p, y)
    acc = float((p.argmax(1) == y).mean())
    assert cal.heldout_accuracy == pytest.approx(acc) and cal.n == 2000 and cal.method == "atc"
    assert cal.estimate(p) == pytest.approx(acc, abs=1e-3)  # by construction, on the held-out data
    est = [cal.estimate(_model(3000, scale, seed)[0]) for scale, seed in ((8.0, 3), (2.5, 4), (1.5, 5))]
    assert est[0] > acc > est[1] > est[2]
    assert Calibration.from_dict(cal.as_dict()) == cal


def test_average_confidence_is_right_for_a_model_that_stays_calibrated():
    # the synthetic model is calibrated at every difficulty once its temperature is known
    p, y = _model(2000, 5.0, 2)
    cal = fit_calibration(p, y, method="average_confidence")
    for scale, seed in ((2.5, 3), (1.5, 4), (8.0, 5)):
        q, yq = _model(3000, scale, seed)
        true = float((q.argmax(1) == yq).mean())
        assert abs(cal.estimate(q) - true) < 0.03, (scale, cal.estimate(q), true)


def test_max_confidence_score_and_round_trip():
    p, y = _model(1000, 5.0, 6)
    cal = fit_calibration(p, y, score="max_confidence")
    assert cal.score == "max_confidence" and cal.estimate(p) == pytest.approx(cal.heldout_accuracy, abs=2e-3)
    s = confidence_scores(p, 1.0, "max_confidence")
    assert np.allclose(s, p.max(axis=1))
    assert (confidence_scores(p) <= 0).all()  # negative entropy


@pytest.mark.parametrize(("call", "match"), [
    (lambda p, y: fit_calibration(p[:5], y[:5]), "too few to calibrate"),
    (lambda p, y: fit_calibration(p[:, :1], y), "at least 2 classes"),
    (lambda p, y: fit_temperature(p, y[:-1]), "one label per row"),
    (lambda p, y: fit_temperature(p, y + 10), "class indices"),
    (lambda p, y: fit_calibration(np.full_like(p, np.nan), y), "NaN"),
    (lambda p, y: confidence_scores(p, 1.0, "margin"), "unknown confidence score"),
    (lambda p, y: Calibration.from_dict({"temperature": 1.0}), "retrain the model"),
    (lambda p, y: fit_calibration(p, y).estimate(p[:0]), "no images"),
    (lambda p, y: fit_calibration(p, y, method="doc"), "unknown estimation method"),
    (lambda p, y: support_distances(np.ones((3, 4)), np.ones((5, 6))), "same width"),
    (lambda p, y: fit_calibration(p, y, embeddings=np.ones((100, 4)), reference=np.ones((9, 4)),
                                  support_quantile=0.2), "support_quantile"),
])
def test_bad_inputs_name_the_fix(call, match):
    p, y = _model(100, 3.0, 7)
    with pytest.raises(InputError, match=match):
        call(p, y)


def _clusters(n, k, seed, spread=0.3, dim=16):
    """Embeddings around k unit-vector class centres (one class per axis)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return np.eye(dim)[y] + rng.normal(0, spread / np.sqrt(dim), (n, dim)), y


def test_support_rule_keeps_the_heldout_estimate_and_counts_far_images_at_chance():
    k = 5
    p, y = _model(2000, 5.0, 2, k=k)
    emb, _ = _clusters(2000, k, 8)
    ref, _ = _clusters(1000, k, 9)
    cal = fit_calibration(p, y, embeddings=emb, reference=ref)
    assert cal.support_quantile == 0.95 and cal.support_radius > 0
    # by construction, on the held-out data (5 % of it is outside the radius)
    assert cal.estimate(p, embeddings=emb, reference=ref) == pytest.approx(cal.heldout_accuracy, abs=1e-3)
    # confident predictions on images far from every training embedding: plain ATC believes
    # them, the support rule counts them at chance
    q, _ = _model(1000, 20.0, 3, k=k)
    far = -_clusters(1000, k, 10)[0]
    plain = cal.estimate(q)
    assert plain > 0.9 and cal.estimate(q, embeddings=far, reference=ref) == pytest.approx(1 / k)
    # embeddings like the training ones: the same as without the rule, nearly
    near, _ = _clusters(1000, k, 11)
    assert abs(cal.estimate(q, embeddings=near, reference=ref) - plain) < 0.06
    assert Calibration.from_dict(cal.as_dict()) == cal
    old = {key: v for key, v in cal.as_dict().items() if not key.startswith("support")}  # a record of 0.1.0
    assert Calibration.from_dict(old).support_radius is None


def test_support_distances_are_the_mean_cosine_distance_to_the_nearest_references():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    d = support_distances(np.array([[2.0, 0.0], [1.0, 1.0]]), ref, k=2)
    assert d == pytest.approx([1 - 0.5, 1 - np.sqrt(0.5)])


def _batch(n, seed, collapse=0.0, onto=0, k=5, dim=8):
    """Labels, confident softmax outputs and embeddings (a cluster per predicted class) of a
    model that is right 90 % of the time; a ``collapse`` share of the images is moved onto
    class ``onto``: confidently predicted as it, embedded among its training images, wrong
    unless that is their label. No confidence or distance sees it; the class mix does."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.9, y, rng.integers(0, k, n))
    pred = np.where(rng.random(n) < collapse, onto, pred)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), pred] += 6
    return _softmax(z), y, np.eye(k, dim)[pred] + rng.normal(0, 0.3, (n, dim))


def test_regression_on_a_shift_panel_sees_a_collapse_that_atc_misses():
    k = 5
    p, y, emb = _batch(1500, 0, k=k)
    ref = _batch(1000, 1, k=k)[2]
    panel = [_batch(300, 10 + i, collapse=f, onto=1, k=k) for i, f in enumerate((0.2, 0.5, 0.9))]
    cal = fit_calibration(p, y, method="regression", embeddings=emb, reference=ref, panel=panel)
    assert cal.panel_size == 3 and len(cal.coefficients) == 4 and cal.far_radius >= cal.support_radius
    assert cal.method_used(embeddings=emb) == "regression"
    assert abs(cal.estimate(p, embeddings=emb, reference=ref) - cal.heldout_accuracy) < 0.03
    # 60 % collapsed onto a class the panel never collapsed onto
    q, yq, eq = _batch(1000, 20, collapse=0.6, onto=3, k=k)
    true = float((q.argmax(1) == yq).mean())
    atc = cal.estimate(q, "atc", eq, ref)
    assert atc - true > 0.3  # confident and in support: ATC believes them
    assert abs(cal.estimate(q, embeddings=eq, reference=ref) - true) < 0.08
    assert Calibration.from_dict(cal.as_dict()) == cal
    # without embeddings, or fitted without a panel, the regression falls back to ATC
    assert cal.method_used() == "atc" and cal.estimate(q) == cal.estimate(q, "atc")
    bare = fit_calibration(p, y, method="regression", embeddings=emb, reference=ref)
    assert bare.coefficients is None and bare.method_used(embeddings=eq) == "atc_support"
    with pytest.raises(InputError, match="panel entry 0"):
        fit_calibration(p, y, embeddings=emb, reference=ref, panel=[(q[:, :3], yq, eq)])
