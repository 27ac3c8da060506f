import pytest
import torch
from torch import nn

from transferops.config import Settings, StrategyConfig
from transferops.errors import InputError
from transferops.models import backbone_blocks, build_model, head_parameters, trainable_parameters
from transferops.search import successive_halving
from transferops.strategies import REGISTRY, get_strategy
from transferops.strategy import CHOICES, STRATEGIES, Evidence, choose_strategy, describe, strategy_params
from transferops.training import make_optimizer

S = Settings(strategy=StrategyConfig(small_max_per_class=100, transferable_min=0.8))


@pytest.mark.parametrize("per_class,probe,expected", [
    (20, 0.95, "feature_extraction"),  # small, the features fit
    (20, 0.50, "full_finetune"),  # small, they do not
    (1000, 0.95, "full_finetune"),  # large, fit
    (1000, 0.50, "scratch"),  # large, misfit
])
def test_the_four_cells_read_size_and_transferability(per_class, probe, expected):
    ev = Evidence(per_class, 5, probe_accuracy=probe, chance=0.2, logme=0.1, shift_p_val=0.001, shift_test="mmd")
    name, reason = choose_strategy(ev, S)
    assert name == expected
    # the reason names every input and threshold
    for text in (f"{per_class}", "100 threshold", f"{probe:.2f}", "chance 0.20", "0.80 threshold", "mmd p=0.001", expected):
        assert text in reason


def test_transferability_rescales_the_probe_from_chance():
    assert Evidence(20, 5, probe_accuracy=0.2, chance=0.2).transferability == 0
    assert Evidence(20, 5, probe_accuracy=1.0, chance=0.2).transferability == pytest.approx(1)
    assert Evidence(20, 5, probe_accuracy=0.6, chance=0.2).transferability == pytest.approx(0.5)
    assert Evidence(20, 5, probe_accuracy=0.1, chance=0.2).transferability == 0  # below chance is no transfer
    assert Evidence(20, 5).transferability is None


def test_thresholds_cells_and_budget_are_configurable():
    ev = Evidence(150, 5, probe_accuracy=0.8, chance=0.0)  # transferability 0.8: inclusive
    assert choose_strategy(ev, S)[0] == "full_finetune"
    s = Settings(strategy=StrategyConfig(small_max_per_class=200, small_fit="lp_ft", large_misfit="full_finetune"))
    assert choose_strategy(ev, s)[0] == "lp_ft"
    assert choose_strategy(Evidence(5000, 5, probe_accuracy=0.3, chance=0.2), s)[0] == "full_finetune"
    low = Settings(strategy=StrategyConfig(budget="low"))
    assert choose_strategy(Evidence(5000, 5, probe_accuracy=0.3, chance=0.2, budget="low"), low)[0] == "partial_finetune"
    assert choose_strategy(Evidence(20, 5, probe_accuracy=0.3, chance=0.2, budget="low"), low)[0] == "feature_extraction"
    with pytest.raises(InputError, match="linear-probe accuracy"):
        choose_strategy(Evidence(20, 5), S)


def test_every_named_strategy_has_a_class_parameters_and_a_description():
    assert set(REGISTRY) == set(STRATEGIES) and CHOICES[:2] == ("auto", "search")
    for name in STRATEGIES:
        params = strategy_params(name, S, freeze_blocks=3)
        assert get_strategy(name).phases(params) and describe(name, params)
    assert strategy_params("partial_finetune", S, freeze_blocks=3)["freeze_blocks"] == 3
    with pytest.raises(InputError, match="unknown strategy 'finetune'.*lp_ft"):
        strategy_params("finetune", S)


def test_phases_say_what_each_strategy_does():
    p = {name: strategy_params(name, S, freeze_blocks=2) for name in STRATEGIES}
    assert [ph.kind for ph in get_strategy("feature_extraction").phases(p["feature_extraction"])] == ["probe"]
    lpft = get_strategy("lp_ft").phases(p["lp_ft"])
    assert [ph.kind for ph in lpft] == ["probe", "train"] and lpft[1].freeze_blocks == 0
    assert lpft[1].lr == pytest.approx(S.training.lr * S.training.lp_ft_lr_mult) and lpft[1].backbone_lr_mult == 1
    full = get_strategy("full_finetune").phases(p["full_finetune"])[0]
    assert full.layer_decay == S.training.layer_decay and full.backbone_lr_mult == S.training.backbone_lr_mult
    assert get_strategy("scratch").pretrained is False
    assert get_strategy("partial_finetune").phases(p["partial_finetune"])[0].freeze_blocks == 2
    # without the cache, feature extraction trains the head by SGD through the frozen backbone, unaugmented
    sgd = get_strategy("feature_extraction").phases(p["feature_extraction"] | {"cache": False})
    assert [(ph.kind, ph.freeze_blocks, ph.augment) for ph in sgd] == [("train", None, False)]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_phase_trains_exactly_what_it_says(name, backbone):
    torch.manual_seed(0)
    model = build_model(backbone, 3)
    blocks = backbone_blocks(model)
    for phase in get_strategy(name).phases(strategy_params(name, S, freeze_blocks=len(blocks) // 2)):
        if phase.kind == "probe":
            continue
        phase.prepare(model)
        k = len(blocks) if phase.freeze_blocks is None else phase.freeze_blocks
        frozen = {id(p) for _, b in blocks[:k] for p in b.parameters()}
        trainable = {id(p) for p in trainable_parameters(model)}
        assert {id(p) for p in head_parameters(model)} <= trainable, "the new head always trains"
        assert trainable.isdisjoint(frozen)
        opt = make_optimizer(model, phase.lr, phase.backbone_lr_mult, phase.weight_decay, layer_decay=phase.layer_decay)
        assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable, "the optimizer sees only trainable parameters"
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


def test_discriminative_learning_rates_decay_towards_the_input():
    model = build_model("resnet18", 3)
    opt = make_optimizer(model, 1e-3, 0.1, layer_decay=0.5)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["head"] == 1e-3 and rates["backbone.layer4"] == pytest.approx(1e-4)
    assert rates["backbone.layer3"] == pytest.approx(5e-5) and rates["backbone.conv1"] == pytest.approx(1e-4 * 0.5**5)


def test_l2_sp_pulls_towards_the_source_weights():
    from transferops.training import l2_sp

    model = build_model("resnet18", 3)
    penalty = l2_sp(model, 0.01)
    assert penalty().detach().item() == 0.0
    with torch.no_grad():
        model.layer1[0].conv1.weight.add_(1.0)
    n = model.layer1[0].conv1.weight.numel()
    assert penalty().detach().item() == pytest.approx(0.5 * 0.01 * n, rel=1e-4)
    with torch.no_grad():
        model.fc.weight.add_(1.0)  # the head is new: no pull on it
    assert penalty().detach().item() == pytest.approx(0.5 * 0.01 * n, rel=1e-4)


def test_successive_halving_keeps_the_better_half_and_grows_the_budget():
    quality = {"a": 0.5, "b": 0.9, "c": 0.7, "d": 0.6}
    calls = []

    def evaluate(c, f):
        calls.append((c, f))
        return (quality[c] * f, 0.0)

    winner, rows = successive_halving(list(quality), evaluate, min_fraction=0.25, eta=2)
    assert winner == "b"
    assert [f for _, f in calls] == [0.25] * 4 + [0.5] * 2  # the lone survivor is the run itself
    assert {c for c, f in calls if f == 0.5} == {"b", "c"}
    assert [r["strategy"] for r in rows if r["kept"] and r["rung"] == 1] == ["b"]
    # three candidates with eta 3 reach the full budget in one halving
    assert successive_halving(["a", "c", "d"], evaluate, min_fraction=0.5, eta=3)[0] == "c"
    with pytest.raises(ValueError):
        successive_halving([], evaluate)
