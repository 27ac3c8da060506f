"""The promotion gates: each one failing alone, ties, no champion, approval, and the tags and table."""

import pytest

from transferops.config import ConfigError, PromotionConfig
from transferops.promotion import decide_promotion, gate_table

CLASSES = ("circle", "square", "triangle")


def metrics(accuracy, recalls=(0.9, 0.9, 0.9), ece=0.05):
    return {"accuracy": accuracy, "macro_f1": accuracy, "ece": ece, "per_class_recall": dict(zip(CLASSES, recalls, strict=True))}


def gate(decision, name):
    return next(g for g in decision.gates if g.name == name)


def test_first_model_becomes_champion():
    d = decide_promotion({"accuracy": 0.4}, None, PromotionConfig())
    assert d.promote and "no champion" in d.reason and d.champion is None
    assert {g.name for g in d.gates} == {"metric", "class_drop", "ece", "latency", "validation", "lineage"}
    assert gate(d, "metric").skipped and gate(d, "class_drop").skipped and not d.failed


@pytest.mark.parametrize("new,old,margin,promote", [
    (0.91, 0.90, 0.0, True), (0.90, 0.90, 0.0, False), (0.80, 0.90, 0.0, False),
    (0.905, 0.90, 0.01, False), (0.92, 0.90, 0.01, True),
    (0.30, 0.20, 0.1, True),  # a delta of exactly min_delta passes (0.3 - 0.2 is 0.0999... in floats)
    (0.90, 0.90, 0.1, False),
])
def test_challenger_must_beat_champion_by_at_least_min_delta(new, old, margin, promote):
    d = decide_promotion({"accuracy": new}, {"accuracy": old}, PromotionConfig(min_delta=margin))
    assert d.promote is promote
    assert (d.challenger, d.champion) == (new, old)
    assert gate(d, "metric").passed is promote and gate(d, "metric").threshold == margin


def test_a_tie_keeps_the_champion_and_says_so():
    d = decide_promotion(metrics(0.9), metrics(0.9), PromotionConfig())
    assert not d.promote and "tie" in gate(d, "metric").note and "champion kept" in d.reason
    assert [g.name for g in d.failed] == ["metric"]


def test_min_improvement_is_read_as_min_delta():
    assert PromotionConfig(min_improvement=0.02).min_delta == 0.02
    assert "min_improvement" not in PromotionConfig(min_improvement=0.02).model_dump()


def test_other_metric_and_missing_metric():
    policy = PromotionConfig(metric="macro_f1")
    assert decide_promotion({"macro_f1": 0.7, "accuracy": 0.1}, {"macro_f1": 0.6, "accuracy": 0.9}, policy).promote
    with pytest.raises(ConfigError, match="macro_f1"):
        decide_promotion({"accuracy": 0.9}, None, policy)
    d = decide_promotion({"macro_f1": 0.9}, {"accuracy": 0.1}, policy)
    assert not d.promote and d.champion is None and "promote by hand" in d.reason


# Each gate failing alone: the challenger is better on accuracy, so only that gate holds it back.
@pytest.mark.parametrize("name,challenger,policy,kwargs", [
    ("class_drop", metrics(0.95, (1.0, 1.0, 0.75)), PromotionConfig(), {}),
    ("ece", metrics(0.95, ece=0.2), PromotionConfig(max_ece=0.1), {}),
    ("latency", metrics(0.95), PromotionConfig(max_latency_ms=10), {"latency_ms": 12.5}),
    ("latency", metrics(0.95), PromotionConfig(max_latency_ms=10), {}),  # asked for, not measured
    ("validation", metrics(0.95), PromotionConfig(), {"validation_ok": False}),
    ("lineage", metrics(0.95), PromotionConfig(), {"lineage_missing": ["git_sha"]}),
])
def test_each_gate_alone_keeps_the_champion(name, challenger, policy, kwargs):
    champion = metrics(0.90)
    assert decide_promotion(metrics(0.95), champion, policy, latency_ms=5.0).promote  # without the flaw it would pass
    d = decide_promotion(challenger, champion, policy, **kwargs)
    assert not d.promote and not d.awaiting_approval
    assert [g.name for g in d.failed] == [name], d.gates
    assert name in d.reason and "champion kept" in d.reason
    assert d.tags()[f"transferops.gate.{name}"].startswith("fail") and d.tags()["transferops.promotion"] == "keep_champion"


def test_the_same_challenger_passes_every_gate_when_it_is_good():
    policy = PromotionConfig(max_ece=0.1, max_latency_ms=10)
    d = decide_promotion(metrics(0.95, (0.85, 1.0, 1.0)), metrics(0.90), policy, latency_ms=4.0)
    assert d.promote and not d.failed and "every gate passes" in d.reason
    assert gate(d, "class_drop").value == pytest.approx(0.05) and "circle" in gate(d, "class_drop").note
    assert d.tags()["transferops.gate.ece"] == "pass 0.0500 <= 0.1000"
    assert d.tags()["transferops.gate.latency"] == "pass 4.0000 <= 10.0000"
    assert d.tags()["transferops.gate.metric"] == "pass 0.0500 >= 0.0000"
    assert all(len(v) <= 250 for v in d.tags().values())


def test_class_drop_is_skipped_without_the_champions_recall_or_a_threshold():
    d = decide_promotion(metrics(0.95, (0.1, 1.0, 1.0)), {"accuracy": 0.9}, PromotionConfig())
    assert d.promote and gate(d, "class_drop").skipped and "champion has no per-class recall" in gate(d, "class_drop").note
    d = decide_promotion(metrics(0.95, (0.1, 1.0, 1.0)), metrics(0.9), PromotionConfig(max_class_drop=None))
    assert d.promote and gate(d, "class_drop").skipped
    # a class the test split lacks (recall None) is not compared
    d = decide_promotion(metrics(0.95, (None, 1.0, 1.0)), metrics(0.9), PromotionConfig())
    assert d.promote and "circle" not in gate(d, "class_drop").note


def test_no_champion_still_needs_the_absolute_gates():
    policy = PromotionConfig(max_ece=0.1, max_latency_ms=10)
    assert decide_promotion(metrics(0.5), None, policy, latency_ms=3.0).promote
    for kwargs in ({"latency_ms": 30.0}, {"latency_ms": 3.0, "validation_ok": False},
                   {"latency_ms": 3.0, "lineage_missing": ["data_md5"]}):
        d = decide_promotion(metrics(0.5), None, policy, **kwargs)
        assert not d.promote and "no champion yet, but" in d.reason
    assert not decide_promotion(metrics(0.5, ece=0.3), None, policy, latency_ms=3.0).promote


def test_approval_waits_when_every_gate_passes_and_not_otherwise():
    policy = PromotionConfig(require_approval=True)
    d = decide_promotion(metrics(0.95), metrics(0.9), policy, version="7")
    assert not d.promote and d.awaiting_approval
    assert "transferops promote 7 --reason" in d.reason and d.tags()["transferops.promotion"] == "awaiting_approval"
    first = decide_promotion(metrics(0.95), None, policy)
    assert first.awaiting_approval and "transferops promote VERSION --reason" in first.reason
    worse = decide_promotion(metrics(0.85), metrics(0.9), policy, version="7")
    assert not worse.promote and not worse.awaiting_approval and "promote 7" not in worse.reason


def test_gate_table_is_markdown_with_every_gate_and_the_decision():
    d = decide_promotion(metrics(0.95, (1.0, 1.0, 0.7)), metrics(0.90), PromotionConfig(), latency_ms=2.0)
    lines = gate_table(d).splitlines()
    assert lines[0] == "| gate | verdict | value | threshold | note |"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:8]}
    assert set(rows) == {"metric", "class_drop", "ece", "latency", "validation", "lineage"}
    assert "| fail | 0.2000 | <= 0.1000 |" in rows["class_drop"] and "| skip |" in rows["latency"]
    assert "**Decision: keep_champion.**" in gate_table(d)
    assert d.as_dict()["gates"][1]["name"] == "class_drop"


def test_class_drop_judges_only_classes_with_enough_test_images():
    champion = metrics(0.90, (1.0, 1.0, 1.0))
    # "circle" falls 0.40 but has 5 test images (one image is 0.20 of its recall); "square" holds 30
    challenger = metrics(0.95, (0.6, 0.97, 1.0)) | {"confusion": [[3, 2, 0], [1, 29, 0], [0, 0, 30]]}
    d = decide_promotion(challenger, champion, PromotionConfig())
    g = gate(d, "class_drop")
    assert d.promote and g.value == pytest.approx(0.03) and "1 class(es) with fewer than 20" in g.note
    d = decide_promotion(challenger, champion, PromotionConfig(min_class_images=5))
    assert not d.promote and gate(d, "class_drop").value == pytest.approx(0.4)
