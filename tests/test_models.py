import copy
import re

import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.ops.misc import FrozenBatchNorm2d

from transferops.models import (WeightsUnavailable, backbone_blocks, build_model, freeze, head_layer, head_parameters, list_backbones, load_bundle,
                                model_from_bundle, reset_head, resolve_weights, save_bundle, trainable_parameters,
                                transforms_spec, unfreeze)
from transferops.errors import InputError
from transferops.training import make_optimizer

# The smallest member of every torchvision classification family, with the input side it
# needs (vit and maxvit take exactly 224; inception needs at least 75).
FAMILIES = {"alexnet": 64, "convnext_tiny": 64, "densenet121": 64, "efficientnet_b0": 64, "efficientnet_v2_s": 64,
            "googlenet": 64, "inception_v3": 96, "maxvit_t": 224, "mnasnet0_5": 64, "mobilenet_v2": 64,
            "mobilenet_v3_small": 64, "regnet_x_400mf": 64, "regnet_y_400mf": 64, "resnet18": 64,
            "resnext50_32x4d": 64, "wide_resnet50_2": 64, "shufflenet_v2_x0_5": 64, "squeezenet1_1": 64,
            "swin_t": 64, "swin_v2_t": 64, "vgg11": 64, "vgg11_bn": 64, "vit_b_32": 224}


def family(name: str) -> str:
    """resnet50 -> resnet, efficientnet_v2_m -> efficientnet_v2, vgg16_bn -> vgg_bn, vit_l_16 -> vit."""
    base = re.sub(r"(_?\d[\w.]*|_[a-z])$", "", re.sub(r"_(tiny|small|base|large|t|s|b|m|l|h)(_\d+)?$", "", name))
    base = re.sub(r"\d+(_\d+)*(x\d+d)?$", "", base)
    return base + ("_bn" if name.endswith("_bn") else "")


def test_every_torchvision_backbone_has_a_tested_family():
    tested = {family(n) for n in FAMILIES}
    missing = sorted(n for n in list_backbones() if family(n) not in tested)
    assert not missing, f"add the smallest model of these families to FAMILIES: {missing}"


def _step(model: nn.Module, n_classes: int, side: int = 64) -> None:
    model.train()
    opt = make_optimizer(model, lr=0.1)
    x = torch.randn(4, 3, side, side) * 3 + 1  # far from BN's running stats, so unfrozen stats move
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, n_classes, (4,)))
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("name", FAMILIES)
def test_reset_head_changes_outputs_and_keeps_features(name):
    torch.manual_seed(0)
    model = build_model(name, 1000)
    parent, key, old = head_layer(model)
    new = reset_head(model, 7)
    assert getattr(parent, key) is new and new is not old
    side = FAMILIES[name]
    model.eval()
    assert model(torch.randn(2, 3, side, side)).shape == (2, 7)
    model.train()  # no auxiliary outputs in training either: the loss takes one tensor
    assert model(torch.randn(2, 3, side, side)).shape == (2, 7)


@pytest.mark.parametrize("name", FAMILIES)
def test_freeze_first_k_blocks_keeps_weights_and_bn_statistics(name):
    torch.manual_seed(0)
    model = build_model(name, 5)
    blocks = backbone_blocks(model)
    k = max(1, len(blocks) // 2)
    freeze(model, k)
    frozen = [p for _, b in blocks[:k] for p in b.parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    assert all(p.requires_grad for _, b in blocks[k:] for p in b.parameters())
    assert all(p.requires_grad for p in head_layer(model)[2].parameters())
    frozen_bns = [m for _, b in backbone_blocks(model)[:k] for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not frozen_bns, "BatchNorm layers inside frozen blocks must become FrozenBatchNorm2d"
    before = {n: t.clone() for n, t in model.state_dict().items()}
    frozen_names = {n for q, _ in backbone_blocks(model)[:k] for n in before if n.startswith(q + ".") or n == q}
    _step(model, 5, FAMILIES[name])
    after = model.state_dict()
    for n in frozen_names:  # weights and running statistics alike
        assert torch.equal(before[n], after[n]), f"{n} moved although its block is frozen"
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in frozen_names)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_freeze_all_then_unfreeze(name):
    model = build_model(name, 4)
    n_all = len(list(model.parameters()))
    freeze(model)
    trainable = {id(p) for p in trainable_parameters(model)}
    assert trainable and trainable <= {id(p) for p in head_parameters(model)}
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    unfreeze(model)
    assert len(trainable_parameters(model)) == n_all
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    model.load_state_dict(build_model(name, 4).state_dict())  # plain torchvision layout again


def test_vit_position_embedding_freezes_with_the_first_block():
    model = build_model("vit_b_16", 3)
    freeze(model, 1)
    assert not model.class_token.requires_grad and not model.encoder.pos_embedding.requires_grad
    assert model.encoder.layers[-1].mlp[0].weight.requires_grad


def test_optimizer_takes_only_trainable_parameters_with_backbone_lr():
    model = build_model("resnet18", 3)
    freeze(model, 3)
    opt = make_optimizer(model, lr=1e-3, backbone_lr_mult=0.1)
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_opt) == len(trainable_parameters(model))
    groups = {g["name"]: g for g in opt.param_groups}
    body = [g for name, g in groups.items() if name.startswith("backbone.")]
    assert groups["head"]["lr"] == 1e-3 and body and all(g["lr"] == pytest.approx(1e-4) for g in body)
    assert "backbone.layer1" not in groups and "backbone.layer4" in groups  # frozen blocks get no group
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.fc.parameters()}
    freeze(model)
    assert [g["name"] for g in make_optimizer(model, lr=1e-3).param_groups] == ["head"]


def test_bad_names_fail_with_the_valid_options():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'.*resnet18"):
        build_model("resnet19", 3)
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        resolve_weights("resnet18", "IMAGENET9K")
    with pytest.raises(ValueError, match="outside 0..6"):
        freeze(build_model("resnet18", 2), 9)


def test_enum_weights_come_from_the_torch_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="not in the torch cache"):
        build_model("resnet18", 3, weights="IMAGENET1K_V1")
    # the same weights placed in the cache load without any network
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(1)
    reference = build_model("resnet18", 1000)
    url = ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), ckpt / url.rsplit("/", 1)[1])
    model = build_model("resnet18", 3, weights="IMAGENET1K_V1")
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and model.fc.out_features == 3


def test_local_state_dict_file_uses_the_architecture_preprocessing(tmp_path):
    torch.manual_seed(2)
    ref = build_model("resnet18", 1000)
    f = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), f)
    w = resolve_weights("resnet18", f)
    assert transforms_spec(w) == transforms_spec(ResNet18_Weights.DEFAULT.value)  # not a second copy
    model = build_model("resnet18", 5, weights=f)
    assert torch.equal(model.layer1[0].conv1.weight, ref.layer1[0].conv1.weight) and model.fc.out_features == 5
    with pytest.raises(InputError, match="missing.pt"):
        resolve_weights("resnet18", tmp_path / "missing.pt")


def test_bundle_roundtrip_reproduces_the_model(tmp_path):
    torch.manual_seed(3)
    model = build_model("mobilenet_v3_small", 4)
    freeze(model, 3)  # frozen BN layers must still export in plain torchvision layout
    model.eval()
    spec = {"crop_size": 32, "resize_size": 36, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}
    save_bundle(model, tmp_path / "b", backbone="mobilenet_v3_small", categories=list("abcd"), transforms=spec)
    bundle = load_bundle(tmp_path / "b")
    again = model_from_bundle(bundle)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), again(x), atol=1e-5)
    t = bundle.weights.transforms()
    assert (t.crop_size, t.resize_size, t.mean) == ([32], [36], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="not a 'resnet18'"):
        resolve_weights("resnet18", tmp_path / "b")


def test_split_preprocessing_is_the_preset_bit_for_bit_on_a_batch():
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2
    from torchvision.transforms._presets import ImageClassification

    from transferops.loading import split_preprocessing

    tf = ImageClassification(crop_size=32, resize_size=36, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((28, 28), (50, 70), (90, 33))]
    per_image, per_batch = split_preprocessing(tf)
    parts = torch.stack([per_image(im) for im in images])
    assert parts.dtype == torch.uint8 and parts.shape == (3, 3, 32, 32)
    assert torch.equal(per_batch(parts), torch.stack([tf(im) for im in images]))
    other = v2.Compose([tf])
    assert split_preprocessing(other) == (other, None)  # anything else stays whole


def test_batch_crops_are_per_image_inside_the_image_and_the_identity_at_full_scale():
    from transferops.loading import random_resized_crop_batch

    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).repeat(8, 1, 1, 1)
    assert torch.allclose(random_resized_crop_batch(x, scale=(1, 1), ratio=(1, 1)), x, atol=1e-6)
    out = random_resized_crop_batch(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert len({round(float(o.sum()), 3) for o in out}) == 8, "each image gets its own crop"
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6  # resampled, never padded
    # a crop of 75-100 % of the area zooms in: a checkerboard's finest detail blurs, never sharpens
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(4, 3, 32, 32).contiguous()
    zoomed = random_resized_crop_batch(board, scale=(0.75, 0.75))
    assert (zoomed - 0.5).abs().mean() < (board - 0.5).abs().mean()


def test_device_preprocessing_augments_on_the_batch_and_ends_like_the_preset():
    import numpy as np
    from PIL import Image
    from torchvision.transforms._presets import ImageClassification

    from transferops.loading import device_preprocessing, split_preprocessing
    from transferops.training import train_one_epoch

    tf = ImageClassification(crop_size=32, resize_size=32, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
    per_image, augmented = device_preprocessing(tf, augment=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    batch = torch.stack([per_image(img)] * 4)
    assert batch.dtype == torch.uint8
    torch.manual_seed(1)
    out = augmented(batch)
    plain = split_preprocessing(tf)[1](batch)
    assert torch.equal(device_preprocessing(tf, augment=False)[1](batch), plain)  # no augmentation: the split preset
    assert out.dtype == torch.float32 and out.shape == plain.shape and not torch.equal(out, plain)
    # normalised like the preset: the same range of values as the un-augmented batch
    assert abs(float(out.mean()) - float(plain.mean())) < 0.3
    # the training step applies it after the copy to the device
    model = build_model("resnet18", 2)
    seen = []
    loader = [(batch, torch.tensor([0, 1, 0, 1]))]
    metrics = train_one_epoch(model, nn.CrossEntropyLoss(), make_optimizer(model, 1e-3), loader, torch.device("cpu"), 0,
                              batch_transform=lambda x: seen.append(x.dtype) or augmented(x))
    assert seen == [torch.uint8] and metrics["images"] == 4


def test_loader_transforms_on_the_device_feed_uint8_batches_that_fit_trains_on(tmp_path):
    """The GPU path's loaders, run on the CPU: uint8 images from the loader, crop and
    normalisation as fit's batch_transforms; off the device, the whole transforms in the loader."""
    from torchvision.transforms._presets import ImageClassification

    from transferops.data import scan_dataset
    from transferops.loading import loader_transforms, make_loader
    from transferops.samples import write_shapes
    from transferops.training import fit, plan_budget

    tf = ImageClassification(crop_size=32, resize_size=32, mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3))
    train_tf, val_tf, on_device = loader_transforms(tf, augment=True, on_device=False)
    assert val_tf is tf and on_device == (None, None) and train_tf is not tf
    train_tf, val_tf, on_device = loader_transforms(tf, augment=True, on_device=True)
    assert all(on_device)
    images = scan_dataset(write_shapes(tmp_path / "shapes", per_class=8), 0.25, 0.0)
    train = make_loader(images.split("train"), images.class_to_idx, train_tf, batch_size=8, shuffle=True)
    val = make_loader(images.split("val"), images.class_to_idx, val_tf, batch_size=8, shuffle=False)
    assert next(iter(train))[0].dtype == torch.uint8
    model = build_model("resnet18", 3)
    result = fit(model, make_optimizer(model, 1e-3), train, val, num_classes=3, device=torch.device("cpu"),
                 budget=plan_budget(len(images.split("train")), 8, epochs=2, min_steps=0, eval_every_steps=1),
                 patience=5, batch_transforms=on_device)
    assert result.steps > 0 and len(result.history) == 2 and all(0 <= r["val_accuracy"] <= 1 for r in result.history)


def test_optimizer_is_fused_adamw_with_the_per_tensor_arithmetic():
    """The fused kernel is a speed-up only: one step puts every weight where the default
    per-tensor AdamW puts it, to float rounding (later steps drift apart only by rounding
    amplified through the network, so one step is the comparison)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    twin = copy.deepcopy(model)
    opt = make_optimizer(model, lr=1e-2, backbone_lr_mult=0.1, weight_decay=1e-2)
    names, twin_params = {id(p): n for n, p in model.named_parameters()}, dict(twin.named_parameters())
    plain = torch.optim.AdamW([{"params": [twin_params[names[id(p)]] for p in g["params"]], "lr": g["lr"],
                                "weight_decay": g["weight_decay"]} for g in opt.param_groups], fused=False, foreach=False)
    assert opt.defaults["fused"] and not plain.defaults["fused"]
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for m, o in ((model, opt), (twin, plain)):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert not torch.equal(a, before[name]), f"{name} did not move"
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name} differs")
