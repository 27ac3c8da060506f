"""The monitor's core: a champion bundle (profile + calibration) against production batches."""

import csv
import json

import pytest

from transferops.assessment import DriftOutcome, pick_strategy
from transferops.config import MonitorConfig, load_settings
from transferops.data import scan_dataset
from transferops.engine import export_bundle, train_model
from transferops.errors import InputError
from transferops.models import load_bundle
from transferops.monitor_report import render_monitor_report
from transferops.monitoring import CALIBRATION_FILE, class_mix, even_indices, monitor_batch, retrain_decision
from transferops.samples import write_shapes
from transferops.sources import open_source, parse_source


@pytest.fixture(scope="module")
def champion(tmp_path_factory, source_bundle):
    """A feature-extraction champion on 40 shapes per class, exported as the train flow does."""
    root = tmp_path_factory.mktemp("monitor")
    data = write_shapes(root / "data", per_class=40, seed=1)
    settings = load_settings(root)
    images = scan_dataset(data)
    src = open_source(parse_source(str(source_bundle)))
    choice = pick_strategy(settings, "feature_extraction", src, images, DriftOutcome(None, "not measured"))
    trained = train_model(settings, src, choice, images, root / "ckpt.pt", progress=False)
    path = export_bundle(settings, trained.model, src, images, root / "bundle", {})
    return settings, load_bundle(path), images


def _scan(batch):
    folder, rows = batch
    return scan_dataset(folder, labels="none"), rows


def test_export_stores_a_calibration(champion):
    _, bundle, _ = champion
    cal = json.loads((bundle.path / CALIBRATION_FILE).read_text())
    assert cal["n"] >= 20 and 0 <= cal["heldout_accuracy"] <= 1 and cal["temperature"] > 0


def test_clean_batch_no_drift_shifted_batch_drifts_and_labels_give_realised_accuracy(champion, tmp_path, flat_batch):
    settings, bundle, _ = champion
    clean, _ = _scan(flat_batch(tmp_path, "plain-7", 7, "plain"))
    res, ref, prod = monitor_batch(settings, bundle, "1", clean)
    assert not res.is_drift and not res.decision.retrain and res.n_images == 45 and res.estimated_accuracy is not None
    assert set(res.class_mix) == {"training", "production"} and res.realized_accuracy is None
    shifted, rows = _scan(flat_batch(tmp_path, "shifted-8", 8, "shifted"))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "label"])
        w.writeheader()
        w.writerows(rows[:30])
    res, ref, prod = monitor_batch(settings, bundle, "1", shifted, labels)
    assert res.is_drift and res.p_val < 0.05 and res.n_labelled == 30 and 0 <= res.realized_accuracy <= 1
    payload = res.event_payload()
    assert payload["model"] == settings.model_name and payload["p_value"] == res.p_val and json.dumps(payload)
    report = render_monitor_report(res, ref.embeddings, prod.embeddings, tmp_path / "report", "monitor")
    text = report.read_text()
    assert "realised accuracy" in text and (tmp_path / "report" / "class_mix.png").is_file()
    assert json.loads((tmp_path / "report" / "monitor.json").read_text())["realized_accuracy"] == res.realized_accuracy


def test_max_images_subsamples_evenly(champion, tmp_path, flat_batch):
    settings, bundle, _ = champion
    clean, _ = _scan(flat_batch(tmp_path, "plain-9", 9, "plain"))
    settings = settings.model_copy(update={"monitor": MonitorConfig(max_images=10)})
    res, _, prod = monitor_batch(settings, bundle, "1", clean)
    assert (res.n_images, res.n_embedded, len(prod.embeddings)) == (45, 10, 10)
    assert even_indices(5, 10) == [0, 1, 2, 3, 4] and even_indices(101, 3) == [0, 50, 100]


def test_bad_labels_files_name_the_line_and_the_fix(champion, tmp_path, flat_batch):
    settings, bundle, _ = champion
    batch, rows = _scan(flat_batch(tmp_path, "plain-10", 10, "plain"))
    cases = {"no header": "a.png,circle\n", "unknown class": "path,label\n" + rows[0]["path"] + ",hexagon\n",
             "not in batch": "path,label\nnope.png,circle\n", "empty": "path,label\n"}
    for text, match in zip(cases.values(), ["needs a header", "line 2: label 'hexagon'", "line 2: 'nope.png'",
                                            "has no rows"], strict=True):
        f = tmp_path / "bad.csv"
        f.write_text(text)
        with pytest.raises(InputError, match=match):
            monitor_batch(settings, bundle, "1", batch, f)
    with pytest.raises(InputError, match="does not exist"):
        monitor_batch(settings, bundle, "1", batch, tmp_path / "missing.csv")


@pytest.mark.parametrize(("policy", "drift", "est", "retrain", "words"), [
    ("drift_and_drop", False, 0.5, False, "no drift"),
    ("drift_and_drop", True, 0.80, True, "0.100 below"),
    ("drift_and_drop", True, 0.88, False, "does not hurt"),
    ("drift_and_drop", True, None, True, "drift alone decides"),
    ("drift", True, 0.90, True, "retrain_on is 'drift'"),
])
def test_retrain_policy(policy, drift, est, retrain, words):
    d = retrain_decision(drift, est, 0.9 if est is not None else None,
                         MonitorConfig(retrain_on=policy, max_accuracy_drop=0.05), "mmd p=0.001")
    assert d.retrain is retrain and words in d.reason


def test_class_mix_counts_every_class():
    assert class_mix([0, 0, 2], ["a", "b", "c"]) == {"a": pytest.approx(2 / 3), "b": 0.0, "c": pytest.approx(1 / 3)}
