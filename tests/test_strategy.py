import pytest
import torch
from torch import nn

from transferops.config import StrategyConfig
from transferops.models import backbone_blocks, build_model, head_parameters, trainable_parameters
from transferops.strategy import STRATEGIES, apply_strategy, choose_strategy, n_blocks, strategy_by_name
from transferops.training import make_optimizer

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


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_trains_exactly_what_it_says(name, backbone):
    torch.manual_seed(0)
    model = build_model(backbone, 3)
    blocks = backbone_blocks(model)
    choice = strategy_by_name(name, n_blocks=len(blocks), cfg=CFG, backbone_lr_mult=0.1)
    apply_strategy(model, choice)
    k = len(blocks) if choice.freeze_blocks is None else choice.freeze_blocks
    frozen = {id(p) for _, b in blocks[:k] for p in b.parameters()}
    trainable = {id(p) for p in trainable_parameters(model)}
    assert {id(p) for p in head_parameters(model)} <= trainable, "the new head always trains"
    assert trainable == {id(p) for p in model.parameters()} - frozen - (set() if k == 0 else _loose(model, blocks))
    assert choice.pretrained is (name != "scratch") and choice.name == name and choice.reason
    opt = make_optimizer(model, 1e-3, choice.backbone_lr_mult)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable, "the optimizer sees only trainable parameters"
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * (choice.backbone_lr_mult if g["name"] == "backbone" else 1.0))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64) * 2 + 1), torch.tensor([0, 1, 2, 0]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.state_dict()
    frozen_names = {n for q, _ in blocks[:k] for n in before if n.startswith(q + ".")}
    assert all(torch.equal(before[n], after[n]) for n in frozen_names), "a frozen block moved"
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and moved.isdisjoint(frozen_names)


def _loose(model, blocks) -> set[int]:
    from transferops.models import _loose_parameters

    return {id(p) for p in _loose_parameters(model, blocks)}
