"""Every strategy through the one training loop, the feature cache, k from data, auto's evidence, the baseline."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from transferops.assessment import DriftOutcome, choose_freeze_blocks, measure_evidence, pick_strategy
from transferops.config import load_settings
from transferops.data import scan_dataset
from transferops.engine import evaluate_on_test, scratch_baseline, train_model
from transferops.features import cached_features
from transferops.sources import open_source, parse_source
from transferops.strategy import STRATEGIES


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shapes_dir, source_bundle):
    root = tmp_path_factory.mktemp("engine")
    (root / "transferops.yaml").write_text("training: {epochs: 2, batch_size: 16}\n")
    s = load_settings(root)
    images = scan_dataset(shapes_dir, s.data.val_fraction, s.data.test_fraction)
    return s, images, open_source(parse_source(str(source_bundle)))


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_trains_through_the_one_loop(setup, name, tmp_path):
    s, images, src = setup
    choice = pick_strategy(s, name, src, images, DriftOutcome(None, "not measured"))
    rows = []
    trained = train_model(s, src, choice, images, tmp_path / "ck.pt", on_epoch=rows.append, progress=False)
    assert rows == trained.fit.history and rows, "every evaluation reaches on_epoch"
    phases = [r["phase"] for r in rows]
    assert ("probe" in phases) is (name in ("feature_extraction", "lp_ft"))
    assert all(r["step"] >= 0 for r in rows) and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    acc = evaluate_on_test(s, trained.model, src.weights, images)["accuracy"]
    assert 0 <= acc <= 1
    if name == "feature_extraction":
        assert trained.fit.steps == 0 and rows[0]["l2"] > 0  # a convex fit, no SGD step
    else:
        assert trained.fit.steps > 0 and trained.extra["budgets"]


def test_feature_extraction_learns_a_separable_task_on_the_cache(setup, tmp_path):
    s, images, src = setup
    choice = pick_strategy(s, "feature_extraction", src, images, DriftOutcome(None, "n/a"))
    trained = train_model(s, src, choice, images, tmp_path / "fe.pt", progress=False)
    # random source weights still carry colour and shape: far above chance (1/3) on 3 classes
    assert evaluate_on_test(s, trained.model, src.weights, images)["accuracy"] > 0.5
    again = train_model(s, src, choice, images, tmp_path / "fe2.pt", progress=False)
    assert again.fit.history[0]["cached"], "the second fit on the same data reads the cache"
    # the fitted head is the model's head: its logits are the probe's on the same features
    head = trained.extra["probe"]
    feats = cached_features(s.state_dir / "features", trained.model, src.weights, images.split("train"),
                            images.class_to_idx, batch_size=16, device=torch.device("cpu"), extra_key=src.backbone)
    with torch.no_grad():
        layer = trained.model.fc
        logits = layer(torch.as_tensor(feats.head)).softmax(1).numpy()
    assert np.allclose(logits, head.predict_proba(feats.head), atol=1e-4)


def test_the_feature_cache_is_keyed_by_records_and_weights(setup, tmp_path):
    from transferops.sources import source_network

    s, images, src = setup
    model = source_network(src)
    args = dict(batch_size=16, device=torch.device("cpu"), extra_key=src.backbone)
    first = cached_features(tmp_path, model, src.weights, images.split("train"), images.class_to_idx, **args)
    start = time.perf_counter()
    again = cached_features(tmp_path, model, src.weights, images.split("train"), images.class_to_idx, **args)
    assert again.cached and not first.cached and time.perf_counter() - start < 1.0
    assert np.array_equal(first.head, again.head) and np.array_equal(first.labels, again.labels)
    other = cached_features(tmp_path, model, src.weights, images.split("val"), images.class_to_idx, **args)
    assert not other.cached and len(other.labels) == len(images.split("val"))
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_partial_finetune_measures_k_and_says_why(setup):
    s, images, src = setup
    k, reason, scores = choose_freeze_blocks(s, src, images)
    assert 1 <= k < len(scores) and len(scores) == 6  # resnet18: conv1, bn1, layer1..4; one block always trains
    best = max(range(len(scores)), key=lambda i: (round(scores[i]["probe_accuracy"], 3), i))
    assert k == max(1, min(best + 1, len(scores) - 1)) and scores[best]["block"] in reason
    choice = pick_strategy(s, "partial_finetune", src, images, DriftOutcome(None, "n/a"))
    assert choice.freeze_blocks == k and choice.evidence["block_probe"] == scores and f"first {k}" in choice.reason
    fixed = s.model_copy(update={"strategy": s.strategy.model_copy(update={"partial_freeze_blocks": 2})})
    assert choose_freeze_blocks(fixed, src, images)[0] == 2


def test_auto_reads_the_probe_and_records_evidence(setup):
    s, images, src = setup
    ev = measure_evidence(s, src, images, DriftOutcome(None, "n/a"))
    assert 0 <= ev.probe_accuracy <= 1 and ev.chance == pytest.approx(1 / 3, abs=0.1) and ev.logme is not None
    choice = pick_strategy(s, "auto", src, images, DriftOutcome(None, "n/a"))
    assert choice.name in STRATEGIES and choice.evidence["probe_accuracy"] == ev.probe_accuracy
    assert "linear probe" in choice.reason and choice.selection_seconds > 0
    # auto no longer needs a source profile: the probe reads the target itself


def test_scratch_baseline_reports_the_three_benefits(setup, tmp_path):
    s, images, src = setup
    choice = pick_strategy(s, "feature_extraction", src, images, DriftOutcome(None, "n/a"))
    trained = train_model(s, src, choice, images, tmp_path / "t.pt", progress=False)
    base = scratch_baseline(s, src, choice, images, tmp_path / "b.pt", trained.fit, progress=False)
    assert base.benefit is not None and base.history and "scratch" in base.note
    assert base.benefit.transfer.final == pytest.approx(max(r["val_accuracy"] for r in trained.fit.history))
    none = s.model_copy(update={"strategy": s.strategy.model_copy(update={"baseline_max_train_images": 0})})
    skipped = scratch_baseline(none, src, choice, images, tmp_path / "b2.pt", trained.fit, progress=False)
    assert skipped.benefit is None and "baseline_max_train_images" in skipped.note
    scratch = pick_strategy(s, "scratch", src, images, DriftOutcome(None, "n/a"))
    assert scratch_baseline(s, src, scratch, images, tmp_path / "b3.pt", trained.fit).benefit is None
