"""Backbones, weights and the transfer helpers: head reset, freeze, unfreeze.

Every model comes from ``torchvision.models.get_model``. Weights come from one
of three places and always arrive as a torchvision ``Weights`` object, so the
preprocessing is ``weights.transforms()`` whatever the origin:

* a torchvision enum (``"IMAGENET1K_V2"``), read from the torch cache and never downloaded;
* a local state-dict file, with the preprocessing of the architecture's default weights;
* a *bundle* folder (``weights.pt`` + ``meta.json`` [+ ``profile.npz``]), which is how
  transferops stores every model it trains, source models included.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import Weights, WeightsEnum
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.transforms._presets import ImageClassification, InterpolationMode

from transferops.errors import InputError, TransferopsError

HEAD_ATTRS = ("fc", "classifier", "heads", "head")
# Containers whose children are the real stages (mobilenet/efficientnet/vgg "features",
# mnasnet "layers", regnet "trunk_output", vit "encoder" -> "layers", maxvit "blocks").
EXPANDABLE = ("features", "layers", "trunk_output", "encoder", "blocks")
BUNDLE_WEIGHTS = "weights.pt"
BUNDLE_META = "meta.json"
BUNDLE_PROFILE = "profile.npz"


class WeightsUnavailable(TransferopsError, RuntimeError):
    """Pretrained weights are not on this machine; transferops never downloads them."""


def list_backbones() -> list[str]:
    """Names of the torchvision classification models ``build_model`` accepts."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_backbone(name: str) -> None:
    names = list_backbones()
    if name not in names:
        raise InputError(f"unknown backbone '{name}'; choose one of: {', '.join(names)}")


# --------------------------------------------------------------------------- weights
def transforms_spec(weights: Weights) -> dict[str, Any]:
    """The preprocessing of ``weights`` as plain data, to store beside a trained model."""
    t = weights.transforms()
    if not isinstance(t, ImageClassification):
        raise TypeError(f"weights transforms {type(t).__name__} are not an ImageClassification preset")
    return {
        "crop_size": int(t.crop_size[0]),
        "resize_size": int(t.resize_size[0]),
        "mean": [float(v) for v in t.mean],
        "std": [float(v) for v in t.std],
        "interpolation": t.interpolation.value,
    }


def make_weights(path: Path, meta: dict[str, Any]) -> Weights:
    """A torchvision ``Weights`` for a local file whose meta holds a ``transforms`` spec."""
    spec = dict(meta["transforms"])
    spec["interpolation"] = InterpolationMode(spec.get("interpolation", "bilinear"))
    return Weights(url=str(path), transforms=partial(ImageClassification, **spec), meta=dict(meta))


def resolve_weights(backbone: str, weights: str | Path | WeightsEnum | Weights | None) -> Weights | None:
    """Turn a weights spec into a torchvision ``Weights`` (or None for random init).

    ``weights`` is None/"none", an enum member or its name (``"IMAGENET1K_V1"``,
    ``"DEFAULT"``), a state-dict file, or a bundle folder.
    """
    _check_backbone(backbone)
    if weights is None or (isinstance(weights, str) and weights.lower() in ("", "none", "scratch")):
        return None
    if isinstance(weights, Weights):
        return weights
    if isinstance(weights, WeightsEnum):
        return weights.value
    path = Path(str(weights)).expanduser()
    if path.is_dir():
        meta = read_bundle_meta(path)
        if meta.get("backbone") != backbone:
            raise InputError(f"bundle {path} holds a '{meta.get('backbone')}', not a '{backbone}'; pass --backbone {meta.get('backbone')}")
        return make_weights(path / BUNDLE_WEIGHTS, meta)
    if path.suffix in (".pt", ".pth", ".bin") or path.exists():
        if not path.is_file():
            raise InputError(f"weights file {path} does not exist; pass an existing .pt/.pth state dict")
        default = torchvision.models.get_model_weights(backbone).DEFAULT.value
        meta = dict(default.meta, backbone=backbone, transforms=transforms_spec(default))
        return make_weights(path, meta)
    enum = torchvision.models.get_model_weights(backbone)
    try:
        return enum[str(weights)].value if str(weights) != "DEFAULT" else enum.DEFAULT.value
    except KeyError:
        valid = ", ".join(m.name for m in enum)
        raise InputError(f"unknown weights '{weights}' for {backbone}; choose one of: {valid}, a .pt file or a bundle folder") from None


def load_state_dict(weights: Weights) -> dict[str, torch.Tensor]:
    """Read the tensors of ``weights`` from disk: a local file or the torch hub cache."""
    url = weights.url
    if url.startswith(("http://", "https://")):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if not cached.is_file():
            raise WeightsUnavailable(
                f"pretrained weights {os.path.basename(url)} are not in the torch cache ({cached.parent}); "
                "download them once where a network is allowed, or pass a local .pt file"
            )
        path = cached
    else:
        path = Path(url)
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(name: str, num_classes: int, weights: str | Path | Weights | WeightsEnum | None = None) -> nn.Module:
    """Build ``name`` with ``num_classes`` outputs, starting from ``weights``.

    >>> model = build_model("resnet18", num_classes=10, weights=None)
    >>> model = build_model("resnet50", 5, weights="IMAGENET1K_V2")  # doctest: +SKIP
    """
    w = resolve_weights(name, weights)
    if w is None:
        return _drop_aux_heads(torchvision.models.get_model(name, weights=None, num_classes=num_classes))
    n_src = len(w.meta.get("categories") or []) or None
    extra = {"num_classes": n_src} if n_src else {}
    # Never hand torchvision the weights: it would download. Load them ourselves.
    model = torchvision.models.get_model(name, weights=None, **extra)
    model.load_state_dict(load_state_dict(w))
    if n_src != num_classes:
        reset_head(model, num_classes)
    return _drop_aux_heads(model)


def _drop_aux_heads(model: nn.Module) -> nn.Module:
    """Remove googlenet's and inception_v3's auxiliary classifiers.

    In ``train()`` mode they make the model return a tuple, which no loss here expects, and
    their heads would keep the source's class count. torchvision drops them the same way
    when it loads pretrained weights without ``aux_logits``.
    """
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)
    return model


# --------------------------------------------------------------------------- structure
def head_layer(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """The final classification layer as (parent module, attribute name, layer)."""
    for attr in HEAD_ATTRS:
        head = getattr(model, attr, None)
        if isinstance(head, (nn.Linear, nn.Conv2d)):
            return model, attr, head
        if isinstance(head, nn.Sequential):
            for key in reversed([k for k, _ in head.named_children()]):
                layer = getattr(head, key)
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    return head, key, layer
    raise TypeError(f"{type(model).__name__} has no recognised classifier head (looked for {', '.join(HEAD_ATTRS)})")


def reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final classifier layer with a fresh one of ``num_classes`` outputs.

    Mirrors timm's ``reset_classifier``. Returns the new layer (trainable).
    """
    parent, key, old = head_layer(model)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:  # 1x1 conv heads (squeezenet)
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    setattr(parent, key, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return new


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the top-level head module (``fc``, ``classifier``, ...)."""
    for attr in HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            return list(getattr(model, attr).parameters())
    raise TypeError(f"{type(model).__name__} has no recognised classifier head")


def backbone_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's parametrised stages in forward order, as (qualified name, module).

    Top-level children minus the head and stateless layers, with feature
    containers (``features``, ``layers``, ``encoder``...) expanded into their stages.
    """

    def walk(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
        out = []
        for name, child in module.named_children():
            if prefix == "" and name in HEAD_ATTRS:
                continue
            qual = f"{prefix}{name}"
            if name in EXPANDABLE and len(list(child.children())) > 1:
                out.extend(walk(child, qual + "."))
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                # buffers count too: a frozen BatchNorm has no parameters but is still a block
                out.append((qual, child))
        return out

    blocks = walk(model, "")
    if not blocks:
        raise TypeError(f"{type(model).__name__} exposes no backbone blocks")
    return blocks


def _loose_parameters(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> list[nn.Parameter]:
    """Parameters owned by no block and no head (vit class token, position embedding)."""
    owned = {id(p) for _, b in blocks for p in b.parameters()} | {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in owned]


# --------------------------------------------------------------------------- freezing
def freeze(model: nn.Module, first_k_blocks: int | None = None) -> nn.Module:
    """Freeze the first ``k`` backbone blocks (all of them when ``k`` is None).

    Frozen parameters get ``requires_grad=False`` and the BatchNorm layers inside
    them become ``FrozenBatchNorm2d``, so their running statistics stay put even in
    ``model.train()`` (timm's ``freeze`` with ``include_bn_running_stats=True``).
    Position embeddings and class tokens freeze with the first block.
    """
    blocks = backbone_blocks(model)
    k = len(blocks) if first_k_blocks is None else first_k_blocks
    if not 0 <= k <= len(blocks):
        raise ValueError(f"first_k_blocks={k} is outside 0..{len(blocks)} for {type(model).__name__}")
    chosen = blocks[:k]
    params = [p for _, b in chosen for p in b.parameters()]
    if k > 0:
        params += _loose_parameters(model, blocks)
    for p in params:
        p.requires_grad_(False)
    for qual, block in chosen:
        for name, sub in list(block.named_modules()):
            if isinstance(sub, nn.BatchNorm2d):
                model.set_submodule(f"{qual}.{name}" if name else qual, _to_frozen_bn(sub))
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable again and restore plain ``BatchNorm2d`` layers."""
    for name, sub in list(model.named_modules()):
        if isinstance(sub, FrozenBatchNorm2d):
            model.set_submodule(name, _from_frozen_bn(sub))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _to_frozen_bn(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        if bn.running_mean is not None:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
    return frozen.to(bn.weight.device if bn.affine else "cpu")


def _from_frozen_bn(frozen: FrozenBatchNorm2d) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps)
    with torch.no_grad():
        bn.weight.copy_(frozen.weight)
        bn.bias.copy_(frozen.bias)
        bn.running_mean.copy_(frozen.running_mean)
        bn.running_var.copy_(frozen.running_var)
    return bn.to(frozen.weight.device)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``: all an optimizer should ever see."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "trainable": sum(p.numel() for p in trainable_parameters(model))}


# --------------------------------------------------------------------------- bundles
@dataclass
class Bundle:
    """A trained model on disk: state dict, meta (backbone, categories, transforms), profile."""

    path: Path
    meta: dict[str, Any]

    @property
    def weights(self) -> Weights:
        return make_weights(self.path / BUNDLE_WEIGHTS, self.meta)

    @property
    def profile_path(self) -> Path | None:
        p = self.path / BUNDLE_PROFILE
        return p if p.is_file() else None


def read_bundle_meta(path: Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a bundle folder."""
    meta_file = Path(path) / BUNDLE_META
    if not meta_file.is_file() or not (Path(path) / BUNDLE_WEIGHTS).is_file():
        raise InputError(f"{path} is not a model bundle: it needs {BUNDLE_WEIGHTS} and {BUNDLE_META}")
    meta = json.loads(meta_file.read_text())
    for key in ("backbone", "categories", "transforms"):
        if key not in meta:
            raise InputError(f"{meta_file} lacks '{key}'; re-export the bundle with transferops")
    return meta


def save_bundle(model: nn.Module, path: Path, *, backbone: str, categories: list[str],
                transforms: dict[str, Any], extra: dict[str, Any] | None = None) -> Bundle:
    """Write ``model`` as a bundle folder (weights.pt + meta.json)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _plain_state_dict(model).items()}
    torch.save(state, path / BUNDLE_WEIGHTS)
    meta = {"backbone": backbone, "categories": list(categories), "transforms": transforms, **(extra or {})}
    (path / BUNDLE_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return Bundle(path, meta)


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle folder."""
    path = Path(path)
    return Bundle(path, read_bundle_meta(path))


def model_from_bundle(bundle: Bundle) -> nn.Module:
    """Rebuild the exact model of a bundle, head included, in eval mode."""
    model = build_model(bundle.meta["backbone"], len(bundle.meta["categories"]), weights=bundle.weights)
    return model.eval()


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with frozen BatchNorms written as plain BatchNorm entries.

    FrozenBatchNorm2d has no ``num_batches_tracked``; restoring it keeps bundles
    loadable into a freshly built torchvision model.
    """
    state = dict(model.state_dict())
    for name, sub in model.named_modules():
        if isinstance(sub, FrozenBatchNorm2d):
            state[f"{name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state
