import pytest

from transferops.config import ConfigError, PromotionConfig
from transferops.promotion import decide_promotion


def test_first_model_becomes_champion():
    d = decide_promotion({"accuracy": 0.4}, None, PromotionConfig())
    assert d.promote and "no champion" in d.reason and d.champion is None


@pytest.mark.parametrize("new,old,margin,promote", [
    (0.91, 0.90, 0.0, True), (0.90, 0.90, 0.0, False), (0.80, 0.90, 0.0, False),
    (0.905, 0.90, 0.01, False), (0.92, 0.90, 0.01, True),
])
def test_challenger_must_beat_champion_by_the_margin(new, old, margin, promote):
    d = decide_promotion({"accuracy": new}, {"accuracy": old}, PromotionConfig(min_improvement=margin))
    assert d.promote is promote
    assert (d.challenger, d.champion) == (new, old)


def test_other_metric_and_missing_metric():
    policy = PromotionConfig(metric="macro_f1")
    assert decide_promotion({"macro_f1": 0.7, "accuracy": 0.1}, {"macro_f1": 0.6, "accuracy": 0.9}, policy).promote
    with pytest.raises(ConfigError, match="macro_f1"):
        decide_promotion({"accuracy": 0.9}, None, policy)
    assert not decide_promotion({"macro_f1": 0.9}, {"accuracy": 0.1}, policy).promote
