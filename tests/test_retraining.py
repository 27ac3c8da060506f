"""The retrain guards: cooldown, no new data, force."""

from datetime import UTC, datetime, timedelta

from transferops.retraining import retrain_guard

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_cooldown_blocks_then_lets_through():
    go = retrain_guard(NOW, NOW - timedelta(hours=2), 24, "old", "new")
    assert not go.proceed and "cooldown" in go.reason and "2026-11-24 10:00" in go.reason
    assert retrain_guard(NOW, NOW - timedelta(hours=25), 24, "old", "new").proceed
    assert retrain_guard(NOW, NOW - timedelta(minutes=1), 0, "old", "new").proceed  # 0: no cooldown


def test_same_data_as_the_champion_is_nothing_to_learn():
    go = retrain_guard(NOW, None, 24, "abc123", "abc123")
    assert not go.proceed and "no new labelled data" in go.reason
    assert retrain_guard(NOW, None, 24, None, "abc123").reason.endswith("(no champion yet)")


def test_force_skips_both_guards():
    assert retrain_guard(NOW, NOW, 24, "same", "same", force=True).proceed
