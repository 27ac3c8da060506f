import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferops.models import build_model
from transferops.training import evaluate, fit, make_optimizer, plan_budget, seed_everything, small_batch, train_one_epoch, warmup_cosine


def _loaders(seed=0):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(48, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable: sign of the red channel's mean
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)
    return train, val


def _run(epochs, ckpt=None, patience=10, lr=1e-3, stop_after=None, min_steps=0):
    seed_everything(0)
    model = build_model("resnet18", 2)
    train, val = _loaders()
    opt = make_optimizer(model, lr=lr)

    def crash(row):  # a "crash" right after an evaluation
        if stop_after is not None and row["epoch"] + 1 >= stop_after:
            raise KeyboardInterrupt

    budget = plan_budget(32, 8, epochs=epochs, min_steps=min_steps, eval_every_steps=1)
    res = fit(model, opt, train, val, num_classes=2, device=torch.device("cpu"), budget=budget, patience=patience,
              checkpoint_path=ckpt, checkpoint_interval_s=0, on_epoch_end=crash)
    return model, res


def test_train_one_epoch_and_evaluate_return_metric_dicts():
    seed_everything(0)
    model = build_model("resnet18", 2)
    train, val = _loaders()
    m = train_one_epoch(model, torch.nn.CrossEntropyLoss(), make_optimizer(model, 1e-3), train, torch.device("cpu"), 0)
    assert m["images"] == 32 and m["steps"] == 4 and m["loss"] > 0 and 0 <= m["accuracy"] <= 1
    e = evaluate(model, torch.nn.CrossEntropyLoss(), val, torch.device("cpu"), num_classes=2)
    assert e["images"] == 16 and sum(map(sum, e["confusion"])) == 16
    assert e["accuracy"] == pytest.approx(sum(e["confusion"][i][i] for i in range(2)) / 16)


def test_fit_is_deterministic_on_cpu():
    _, a = _run(2)
    _, b = _run(2)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["val_accuracy"] for h in a.history] == [h["val_accuracy"] for h in b.history]


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(4, ckpt, stop_after=2)  # interrupted after epoch 2 (its checkpoint is written first)
    model_resumed, resumed = _run(4, ckpt)
    model_full, full = _run(4)
    assert resumed.resumed_from == 1 and len(resumed.history) == 4 and resumed.steps == full.steps == 16
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])
    for a, b in zip(model_resumed.state_dict().values(), model_full.state_dict().values()):
        assert torch.allclose(a.float(), b.float())


def test_early_stopping_restores_the_best_evaluation():
    model, res = _run(12, patience=1, lr=1e-12)  # weights barely move: the smoothed val loss soon stops improving
    assert res.stopped_early and len(res.history) == res.best_epoch + 2
    _, val = _loaders()
    again = evaluate(model, torch.nn.CrossEntropyLoss(), val, torch.device("cpu"), num_classes=2)
    assert again["accuracy"] == res.best_accuracy
    assert res.best_loss == min(h["val_loss_smoothed"] for h in res.history)


def test_early_stopping_waits_for_half_the_minimum_steps():
    _, res = _run(12, patience=1, lr=1e-12, min_steps=80)  # 80 steps = 20 epochs of 4 steps
    assert res.stopped_early and res.steps >= 40 and len(res.history) == res.steps // 4


def test_the_budget_gives_small_data_enough_steps():
    small = plan_budget(85, small_batch(85, 64), epochs=8, min_steps=300, eval_every_steps=20)
    assert small_batch(85, 64) == 22 and small.steps_per_epoch == 4 and small.steps >= 300
    assert small.eval_every == 5  # judged every ~20 steps, not every epoch of 4
    large = plan_budget(5000, 64, epochs=8, min_steps=300)
    assert large.epochs == 8 and large.steps == 8 * 79 and large.eval_every == 1
    assert small_batch(33, 64) == 9 and 33 % small_batch(33, 64) != 1  # never a last batch of one image


def test_warmup_then_cosine_schedule():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(99) < 0.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_with_bf16_autocast_and_channels_last():
    seed_everything(0)
    model = build_model("resnet18", 2)
    train, val = _loaders()
    res = fit(model, make_optimizer(model, 1e-3), train, val, num_classes=2, device=torch.device("cuda"),
              budget=plan_budget(32, 8, epochs=2, min_steps=0, eval_every_steps=1), patience=5, amp=True,
              channels_last=True)
    assert len(res.history) == 2 and all(h["train_loss"] == h["train_loss"] for h in res.history)  # no NaN
    assert next(model.parameters()).is_cuda
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are the input itself: evaluation metrics of known outputs."""

    def forward(self, x):
        return x


def test_per_class_recall_and_ece_of_known_outputs():
    from transferops.training import expected_calibration_error

    # class 0: 2 of 2 right at confidence 0.9; class 1: 1 of 2 right at 0.6; class 2: no images
    p = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.6, 0.2, 0.2]])
    y = torch.tensor([0, 0, 1, 1])
    loader = DataLoader(TensorDataset(p.log(), y), batch_size=3)  # log: softmax gives p back
    e = evaluate(_Fixed(), torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"), num_classes=3, classes=["a", "b", "c"])
    assert e["per_class_recall"] == {"a": 1.0, "b": 0.5, "c": None}
    # bins (0.8, 0.867] and (0.533, 0.6]: accuracy 1 vs confidence 0.9 (2 images), 0.5 vs 0.6 (2 images)
    assert e["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert e["accuracy"] == 0.75 and {"loss", "macro_f1", "confusion", "images"} <= set(e)
    assert evaluate(_Fixed(), torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"),
                    num_classes=3)["per_class_recall"] == {"0": 1.0, "1": 0.5, "2": None}
    # perfectly calibrated: 80 % right at confidence 0.8; overconfident: 50 % right at 0.99
    assert expected_calibration_error([0.8] * 5, [1, 1, 1, 1, 0]) == pytest.approx(0.0)
    assert expected_calibration_error([0.99] * 4, [1, 0, 1, 0]) == pytest.approx(0.49)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == pytest.approx(0.0)  # the edges land in the end bins


def test_measure_latency_and_size():
    from transferops.engine import measure_latency

    model = build_model("resnet18", 2).train()
    cost = measure_latency(model, (3, 16, 16), "cpu", batch_sizes=(1, 4), repeats=2)
    assert set(cost.latency_ms) == {1, 4} and all(ms > 0 for ms in cost.latency_ms.values())
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.bytes >= 4 * cost.params  # float32 weights, plus BatchNorm buffers
    assert model.training, "the model's mode is put back"
    assert set(cost.metrics()) == {"latency_ms_b1", "latency_ms_b4", "model_params", "model_bytes"}
    assert measure_latency(model, (3, 16, 16), "cpu", repeats=0).latency_ms == {}


def test_epoch_metrics_summed_on_the_device_are_the_per_batch_ones():
    """Loss and hits are summed on the device and read once: the figures must be exactly
    what reading them after every batch gives (a frozen learning rate keeps the weights)."""
    seed_everything(0)
    model = build_model("resnet18", 2)
    train, _ = _loaders()
    criterion = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = train_one_epoch(model, criterion, opt, train, torch.device("cpu"), 0)
    train.generator.manual_seed(0)  # the same shuffled order again
    loss_sum, hits, n = 0.0, 0, 0
    model.train()
    with torch.no_grad():
        for x, y in train:
            out = model(x)
            loss_sum += criterion(out, y).item() * len(y)
            hits += int((out.argmax(1) == y).sum())
            n += len(y)
    assert m["images"] == n and m["accuracy"] == hits / n
    assert m["loss"] == pytest.approx(loss_sum / n, rel=1e-6)


def test_prepare_model_leaves_a_cpu_model_as_it_is_and_loaders_follow_the_device():
    from transferops.config import TrainingConfig
    from transferops.loading import make_loader
    from transferops.training import prepare_model

    model = build_model("resnet18", 2)
    assert prepare_model(model, torch.device("cpu"), channels_last=True, compile=True) is model
    assert model.conv1.weight.is_contiguous()  # NHWC and compiling are for CUDA
    cfg = TrainingConfig()
    assert cfg.loader_workers(torch.device("cpu")) == 0
    assert 1 <= cfg.loader_workers("cuda") <= 8
    assert TrainingConfig(num_workers=3).loader_workers("cuda") == 3
    cpu = make_loader([], {}, None, batch_size=4, shuffle=False, device="cpu")
    assert not cpu.pin_memory and cpu.num_workers == 0
    gpu = make_loader([], {}, None, batch_size=4, shuffle=False, num_workers=2, device="cuda")
    assert gpu.pin_memory and gpu.persistent_workers and gpu.prefetch_factor == 4
