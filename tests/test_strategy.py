import pytest

from transferops.config import StrategyConfig
from transferops.models import build_model, trainable_parameters
from transferops.strategy import apply_strategy, choose_strategy, n_blocks, strategy_by_name

CFG = StrategyConfig(small_max_per_class=100, similar_min_similarity=0.5)


@pytest.mark.parametrize("per_class,similarity,expected,frozen", [
    (20, 0.9, "feature_extraction", None),
    (20, 0.1, "partial_finetune", 3),
    (1000, 0.9, "full_finetune", 0),
    (1000, 0.1, "scratch", 0),
])
def test_the_four_classic_cases(per_class, similarity, expected, frozen):
    c = choose_strategy(per_class, similarity, n_blocks=6, cfg=CFG, backbone_lr_mult=0.1)
    assert c.name == expected and c.freeze_blocks == frozen
    assert c.size == ("small" if per_class < 100 else "large") and c.similarity == similarity
    assert f"{per_class}" in c.reason and f"{similarity:.2f}" in c.reason and expected in c.reason
    assert c.pretrained is (expected != "scratch")
    assert c.backbone_lr_mult == (0.1 if expected == "full_finetune" else 1.0)


def test_thresholds_are_inclusive_and_configurable():
    assert choose_strategy(100, 0.5, n_blocks=6, cfg=CFG, backbone_lr_mult=0.1).name == "full_finetune"
    cfg = StrategyConfig(small_max_per_class=100, large_different="full_finetune", partial_freeze_blocks=2)
    assert choose_strategy(500, 0.0, n_blocks=6, cfg=cfg, backbone_lr_mult=0.1).name == "full_finetune"
    assert choose_strategy(5, 0.0, n_blocks=6, cfg=cfg, backbone_lr_mult=0.1).freeze_blocks == 2


def test_named_strategies_freeze_what_they_say():
    model = build_model("resnet18", 3)
    blocks = n_blocks(model)
    choice = strategy_by_name("feature_extraction", n_blocks=blocks, cfg=CFG, backbone_lr_mult=0.1)
    apply_strategy(model, choice)
    assert {id(p) for p in trainable_parameters(model)} == {id(p) for p in model.fc.parameters()}
    model = build_model("resnet18", 3)
    apply_strategy(model, strategy_by_name("partial_finetune", n_blocks=blocks, cfg=CFG, backbone_lr_mult=0.1))
    assert not model.layer1[0].conv1.weight.requires_grad and model.layer3[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="unknown strategy 'finetune'.*partial_finetune"):
        strategy_by_name("finetune", n_blocks=blocks, cfg=CFG, backbone_lr_mult=0.1)
