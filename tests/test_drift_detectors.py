"""The detectors beyond MMD, the fast MMD paths, profiles and the combined report."""

import numpy as np
import pytest

from transferops.drift import (ClassifierDrift, DriftInputError, KSDrift, LabelShiftDrift, MMDDrift, bh_adjust,
                               similarity_from_auc)
from transferops.drift.mmd import median_sq_distance, reduce_dims, shrink_scale
from transferops.drift.profile import Profile
from transferops.drift.report import drift_report


def test_exact_statistic_is_the_unbiased_mmd2():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(40, 3)) + 0.3
    det = MMDDrift(a, n_permutations=5, n_components=None, shrinkage=None, sigma=1.5)
    k = lambda u, v: np.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / (2 * 1.5**2))  # noqa: E731
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    want = ((kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (40 * 39) - 2 * kxy.mean())
    assert det.score(b).distance == pytest.approx(want, rel=1e-4)


def test_random_fourier_features_approximate_the_exact_statistic():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) + 0.5
    exact = MMDDrift(a, n_permutations=1, exact_max=10**6).score(b).distance
    rff = MMDDrift(a, n_permutations=1, exact_max=0, n_features=8192).score(b).distance
    assert rff == pytest.approx(exact, rel=0.15, abs=2e-3)


def test_reduction_finds_the_principal_axes_and_shrinkage_tames_loud_ones():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 20)) * np.r_[10.0, 5.0, np.full(18, 0.1)]  # two loud axes, 18 quiet ones
    parts = [torch.from_numpy(x[:700]), torch.from_numpy(x[700:])]
    z = reduce_dims(parts, 2, torch.Generator().manual_seed(0))
    assert z.shape == (2000, 2) and abs(float(z.mean(0).abs().max())) < 1e-3
    np.testing.assert_allclose(z.std(0).numpy(), [10.0, 5.0], rtol=0.1)  # the loud axes, in order
    full = reduce_dims(parts, None, torch.Generator().manual_seed(0))
    raw, lifted, white = (shrink_scale(full, s).std(0).numpy() for s in (None, 1.0, 0.0))
    # loud axes come out near unit variance; quiet ones keep their proportions, so they gain on the loud ones
    assert lifted[0] == pytest.approx(1.0, abs=0.1) and lifted[1] == pytest.approx(0.9, abs=0.1)
    assert lifted[2:].mean() / lifted[0] > 3 * raw[2:].mean() / raw[0]
    np.testing.assert_allclose(white, 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="shrinkage"):
        MMDDrift(x, shrinkage=-1)


@pytest.mark.parametrize("exact_max", [0, 10**6], ids=["random-fourier-features", "exact-kernel"])
def test_both_mmd_paths_hold_their_level_and_detect_shift(exact_max):
    rng = np.random.default_rng(1)
    alarms = sum(MMDDrift(rng.normal(size=(60, 40)), n_permutations=100, exact_max=exact_max, n_components=8,
                          seed=i).predict(rng.normal(size=(60, 40))).is_drift for i in range(100))
    assert alarms <= 12  # alpha = 0.05 over 100 trials: 12 lies far outside a calibrated test's spread
    shifted = MMDDrift(rng.normal(size=(200, 40)), exact_max=exact_max).predict(rng.normal(size=(200, 40)) + 0.4)
    assert shifted.is_drift and shifted.detail["method"] == ("rff" if exact_max == 0 else "exact")


def test_mmd_is_reproducible_and_subsamples():
    rng = np.random.default_rng(2)
    ref, x = rng.normal(size=(3000, 16)), rng.normal(size=(3000, 16)) + 0.05
    a = MMDDrift(ref, seed=3, max_samples=500).predict(x)
    assert a == MMDDrift(ref, seed=3, max_samples=500).predict(x)
    assert (a.n_ref, a.n_test) == (500, 500)
    z = __import__("torch").from_numpy(ref[:100].astype("float32"))
    assert median_sq_distance(z, __import__("torch").Generator().manual_seed(0)) == pytest.approx(2 * 16, rel=0.3)


def test_ks_per_feature_with_bonferroni_and_fdr():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(400, 10))
    x = rng.normal(size=(400, 10))
    assert not KSDrift(ref).predict(x).is_drift
    x[:, 4] += 0.5  # one feature moves
    for correction in ("permutation", "bonferroni", "fdr"):
        res = KSDrift(ref, correction=correction).predict(x)
        assert res.is_drift and res.detail["features_drifted"] >= 1
        assert int(np.argmax(res.detail["distances"])) == 4 and len(res.detail["p_vals"]) == 10
    with pytest.raises(ValueError, match="correction"):
        KSDrift(ref, correction="holm")


def test_ks_permutation_null_matches_scipy_and_holds_its_level():
    from scipy.stats import ks_2samp
    torch = pytest.importorskip("torch")

    from transferops.drift.univariate import max_ks_null

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(50, 3)).astype("float32"), rng.normal(size=(40, 3)).astype("float32")
    a[:5, 0] = b[:5, 0] = 0.0  # ties: the statistic is only cut after the last tied value
    z = np.concatenate([a, b])
    first = np.zeros(90, bool)
    first[torch.randperm(90, generator=torch.Generator().manual_seed(1))[:50].numpy()] = True
    want = max(ks_2samp(z[first, j], z[~first, j]).statistic for j in range(3))
    assert max_ks_null(a, b, 1, seed=1)[0] == pytest.approx(want)
    # strongly correlated features: Bonferroni turns conservative, the permutation test does not
    base = rng.normal(size=(200, 60, 1))
    x = (base + 0.2 * rng.normal(size=(200, 60, 20))).astype("float32")
    perm = [KSDrift(x[i, :30], seed=i).predict(x[i, 30:]).is_drift for i in range(200)]
    bonf = [KSDrift(x[i, :30], correction="bonferroni").predict(x[i, 30:]).is_drift for i in range(200)]
    assert 3 <= sum(perm) <= 20 and sum(bonf) < sum(perm)


def test_bh_adjust_matches_the_textbook_example():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(bh_adjust(p), [0.02, 0.04, 0.04, 0.02])


def test_bbsd_sees_a_change_in_the_class_mix_and_refuses_logits():
    rng = np.random.default_rng(4)

    def probs(n, mix):
        y = rng.choice(3, n, p=mix)
        logits = rng.normal(size=(n, 3)) + 3 * np.eye(3)[y]
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    det = LabelShiftDrift(probs(500, [1 / 3] * 3))
    assert not det.predict(probs(500, [1 / 3] * 3)).is_drift
    res = det.predict(probs(500, [0.6, 0.2, 0.2]))
    assert res.is_drift and res.test == "bbsd" and res.detail["test_class_mix"][0] > res.detail["ref_class_mix"][0]
    with pytest.raises(DriftInputError, match="not probabilities"):
        det.predict(rng.normal(size=(50, 3)))


def test_classifier_test_and_similarity():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(300, 8))
    same = ClassifierDrift(ref).predict(rng.normal(size=(300, 8)))
    assert not same.is_drift and 0.4 < same.distance < 0.6 and same.detail["similarity"] > 0.8
    far = ClassifierDrift(ref).predict(rng.normal(size=(300, 8)) + 1.0)
    assert far.is_drift and far.p_val < 1e-6 and far.distance > 0.9
    assert far.detail["auc"] > 0.9 and far.detail["similarity"] < 0.2
    assert similarity_from_auc(0.5) == 1.0 and similarity_from_auc(1.0) == 0.0 and similarity_from_auc(0.3) == 1.0


def test_classifier_test_holds_its_level():
    # the held-out split keeps the Mann-Whitney p-value exact; pooled out-of-fold scores would not
    rng = np.random.default_rng(8)
    alarms = sum(ClassifierDrift(rng.normal(size=(60, 6)), seed=i).predict(rng.normal(size=(60, 6))).is_drift
                 for i in range(100))
    assert alarms <= 12
    with pytest.raises(ValueError, match="test_fraction"):
        ClassifierDrift(rng.normal(size=(60, 6)), test_fraction=1.0)


def test_roc_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from transferops.drift.classifier import roc_auc

    rng = np.random.default_rng(9)
    scores, labels = rng.normal(size=200).round(1), rng.integers(0, 2, 200)  # rounded: ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_profile_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(6)
    prof = Profile(rng.normal(size=(50, 4)).astype("float32"), rng.dirichlet([1, 1], 50).astype("float32"),
                   rng.integers(0, 2, 50), {"classes": ["a", "b"], "backbone": "resnet18"})
    back = Profile.load(prof.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.embeddings, prof.embeddings)
    assert back.classes == ["a", "b"] and back.meta["backbone"] == "resnet18" and len(back) == 50
    np.savez(tmp_path / "old.npz", embeddings=prof.embeddings)  # an issue-2 profile: embeddings only
    assert Profile.load(tmp_path / "old.npz").probs is None
    np.savez(tmp_path / "bad.npz", embeddings=prof.embeddings, labels=np.zeros(3))
    with pytest.raises(DriftInputError, match="labels has 3 rows but embeddings has 50"):
        Profile.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DriftInputError, match="junk.npz is unreadable"):
        Profile.load(tmp_path / "junk.npz")
    with pytest.raises(DriftInputError, match="transferops profile"):
        Profile.load(tmp_path / "missing.npz")


def test_report_runs_every_test_and_names_the_furthest_class():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(400, 6)).astype("float32")
    labels = np.repeat([0, 1], 200)
    prof = Profile(ref, rng.dirichlet([1, 1], 400).astype("float32"), labels, {"classes": ["a", "b"]})
    x = rng.normal(size=(200, 6)).astype("float32")
    x[100:] += 1.5  # class b moved
    rep = drift_report(prof, x, probs=rng.dirichlet([1, 1], 200).astype("float32"), labels=["a"] * 100 + ["b"] * 100)
    assert [r.test for r in rep.results] == ["mmd", "classifier", "ks", "bbsd"]
    assert rep.decision.test == "mmd" and rep.decision.is_drift
    assert rep.per_class["b"] > 10 * rep.per_class["a"]
    no_probs = drift_report(prof, x, tests=("mmd", "bbsd"))
    assert "bbsd" in no_probs.skipped and [r.test for r in no_probs.results] == ["mmd"]
