import numpy as np
import pytest

from transferops.drift import DriftInputError, MMDDrift, domain_classifier_auc, source_similarity


def _sample(rng, n, shift=0.0, d=16):
    return rng.normal(size=(n, d)) + shift


def test_equal_distributions_do_not_drift_and_shifted_ones_do():
    rng = np.random.default_rng(0)
    det = MMDDrift(_sample(rng, 300), n_permutations=200, seed=0)
    same = det.predict(_sample(rng, 300))
    assert not same.is_drift and same.p_val > 0.05 and same.threshold == 0.05
    shifted = det.predict(_sample(rng, 300, shift=0.5))
    assert shifted.is_drift and shifted.p_val < 0.01
    assert shifted.distance > shifted.distance_threshold > same.distance
    assert 0 < shifted.p_val <= 1


def test_false_alarm_rate_is_near_the_level():
    rng = np.random.default_rng(1)
    alarms = sum(MMDDrift(_sample(rng, 60, d=4), n_permutations=100, seed=i).predict(_sample(rng, 60, d=4)).is_drift
                 for i in range(100))
    assert 0 <= alarms <= 12  # alpha = 0.05; 12 is far outside a calibrated test's binomial spread


def test_results_are_reproducible_with_a_seed():
    rng = np.random.default_rng(2)
    ref, x = _sample(rng, 200), _sample(rng, 200, 0.1)
    a = MMDDrift(ref, seed=7).predict(x)
    b = MMDDrift(ref, seed=7).predict(x)
    assert a == b


def test_similarity_falls_monotonically_with_the_shift():
    rng = np.random.default_rng(3)
    ref = _sample(rng, 400)
    sims = [source_similarity(ref, _sample(rng, 400, s)) for s in (0.0, 0.1, 0.3, 1.0)]
    assert sims[0] > 0.8 and sims[-1] < 0.05
    assert all(a >= b for a, b in zip(sims, sims[1:])), sims
    assert 0.45 < domain_classifier_auc(ref, _sample(rng, 400)) < 0.6


def test_bad_inputs_give_clear_errors():
    rng = np.random.default_rng(4)
    det = MMDDrift(_sample(rng, 50))
    with pytest.raises(DriftInputError, match="2-D"):
        det.predict(rng.normal(size=(50,)))
    with pytest.raises(DriftInputError, match="has 8 features but the reference has 16"):
        det.predict(rng.normal(size=(50, 8)))
    bad = _sample(rng, 50)
    bad[3, 2] = np.nan
    with pytest.raises(DriftInputError, match="NaN"):
        det.predict(bad)
    with pytest.raises(DriftInputError, match="at least 5"):
        det.predict(_sample(rng, 3))
    with pytest.raises(ValueError, match="p_val"):
        MMDDrift(_sample(rng, 50), p_val=1.5)
