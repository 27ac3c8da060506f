"""Where transfer starts: a source model, its weights (with their preprocessing) and its profile.

A *source spec* is what a user types after ``--source``:

* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: a registered model. The registry
  adapter (``tasks/sources.py``) downloads its bundle; everything after that happens here;
* ``BACKBONE:WEIGHTS``: a torchvision weights enum such as ``resnet50:IMAGENET1K_V2``,
  read from the torch cache, never downloaded;
* a bundle folder (how transferops stores every model it trains);
* a state-dict file (``.pt``), which needs ``backbone``.

Parsing is pure (:func:`parse_source`), so a bad spec fails before anything is fetched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from transferops.errors import InputError

if TYPE_CHECKING:  # torch and torchvision load only when a model is built
    from torch import nn
    from torchvision.models import Weights

    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.drift.profile import Profile

SourceKind = Literal["registry", "bundle", "enum", "file"]


@dataclass(frozen=True)
class SourceRef:
    """A parsed source spec: what kind it is and what it names; nothing is opened yet."""

    spec: str
    kind: SourceKind
    backbone: str | None = None  # known up front for enum and file specs
    weights: str | None = None  # the enum name or the file path

    @property
    def cache_key(self) -> str:
        """A short stable folder name for a downloaded copy of this source."""
        return hashlib.sha1(self.spec.encode()).hexdigest()[:12]


def parse_source(spec: str, backbone: str | None = None) -> SourceRef:
    """Classify a source spec.

    >>> parse_source("models:/transferops-source@champion").kind
    'registry'
    >>> parse_source("resnet50:IMAGENET1K_V2")
    SourceRef(spec='resnet50:IMAGENET1K_V2', kind='enum', backbone='resnet50', weights='IMAGENET1K_V2')
    """
    if not spec:
        raise InputError("the source is empty; pass models:/NAME@ALIAS, BACKBONE:WEIGHTS, a bundle folder or a .pt file")
    if spec.startswith("models:/"):
        return SourceRef(spec, "registry")
    path = Path(spec).expanduser()
    if path.is_dir():
        return SourceRef(spec, "bundle", weights=str(path))
    if ":" in spec and not path.exists():
        name, enum = spec.split(":", 1)
        return SourceRef(spec, "enum", name, enum)
    if not path.is_file():
        raise InputError(f"source {spec} is neither a registered model (models:/NAME@ALIAS), a weights enum "
                         "(BACKBONE:WEIGHTS), a bundle folder nor an existing .pt file; pass one of those")
    if not backbone:
        raise InputError(f"source {spec} is a weights file; also pass --backbone NAME")
    return SourceRef(spec, "file", backbone, str(path))


@dataclass
class SourceModel:
    """A backbone, its weights (with preprocessing) and its source profile, ready to transfer from."""

    uri: str
    backbone: str
    weights: "Weights"
    profile: "Profile | None"
    profile_origin: str
    version_uri: str = ""  # models:/NAME/N for a registry source (an alias pinned as it resolved)

    @property
    def categories(self) -> list[str]:
        """The source's own classes (the head it was trained with)."""
        return list(self.weights.meta.get("categories") or [])


def open_source(ref: SourceRef, bundle_dir: Path | None = None, profile: str | Path | None = None) -> SourceModel:
    """Open a parsed source. A registry source needs its downloaded ``bundle_dir``;
    an explicit ``profile`` (.npz) overrides the bundle's own."""
    from transferops.drift.profile import Profile
    from transferops.models import load_bundle, resolve_weights

    prof: Path | None = None
    if ref.kind in ("registry", "bundle"):
        folder = bundle_dir if ref.kind == "registry" else Path(str(ref.weights))
        if folder is None:
            raise ValueError(f"{ref.spec} is a registered model: fetch its bundle first (tasks.sources.open_source)")
        bundle = load_bundle(folder)
        name, weights, prof = bundle.meta["backbone"], bundle.weights, bundle.profile_path
    else:
        name = str(ref.backbone)
        weights = resolve_weights(name, ref.weights)
        if weights is None:
            raise InputError(f"source {ref.spec} means random weights; name pretrained weights or use --strategy scratch")
    if profile:
        prof = Path(profile).expanduser()
        if not prof.is_file():
            raise InputError(f"source profile {prof} does not exist; pass an .npz built by `transferops profile`")
    return SourceModel(ref.spec, name, weights, Profile.load(prof) if prof else None, str(prof) if prof else "none")


def source_from_profile(profile_path: str | Path) -> SourceRef:
    """The source a profile names in its metadata: the network that made its embeddings."""
    from transferops.drift.profile import Profile

    meta = Profile.load(profile_path).meta
    if not meta.get("backbone") or not meta.get("weights"):
        raise InputError(f"profile {profile_path} does not name its backbone and weights; also pass --source")
    source, backbone = str(meta["weights"]), str(meta["backbone"])
    if not Path(source).expanduser().exists():
        source = f"{backbone}:{source}"  # a weights enum name
    return parse_source(source, backbone)


def scratch_source(images: "ImageSet", backbone: str, image_size: int) -> SourceModel:
    """A source with no weights yet (a source model to develop): preprocessing from the
    source data's own channel statistics at ``image_size``."""
    from transferops.loading import compute_mean_std
    from transferops.models import make_weights

    mean, std = compute_mean_std(images.split("train"), image_size)
    meta = {"backbone": backbone, "categories": images.classes,
            "transforms": {"crop_size": image_size, "resize_size": image_size, "mean": mean, "std": std,
                           "interpolation": "bilinear"}}
    return SourceModel(f"scratch:{backbone}", backbone, make_weights(Path("(untrained)"), meta), None, "none")


def source_network(src: SourceModel) -> "nn.Module":
    """The source model itself (its own head kept), for embedding target data."""
    from transferops.models import build_model

    n = len(src.categories) or 1000
    return build_model(src.backbone, n, weights=src.weights).eval()


def embed_images(model: "nn.Module", images: "ImageSet", split: str | None, weights: "Weights", limit: int,
                 batch_size: int, device: Any, meta: dict[str, Any] | None = None) -> "Profile":
    """Embeddings, softmax outputs and labels of up to ``limit`` images of ``split`` (None: all),
    preprocessed by ``weights.transforms()``; the shape of a stored profile."""
    from transferops.drift.profile import build_profile

    records = images.split(split) if split else images.records
    return build_profile(model, records, images.class_to_idx, weights, size=limit, batch_size=batch_size,
                         device=device, meta=meta)


def profile_backbone(settings: "Settings", backbone: str, weights: str, data: Path, size: int | None = None) -> "Profile":
    """A source profile of any torchvision backbone from a folder of source-domain images.

    ``weights`` is a weights enum name (from the torch cache, never downloaded here), a
    state-dict file or a bundle folder. Every image of every split is a candidate.
    """
    from transferops.data import scan_dataset
    from transferops.models import resolve_weights, transforms_spec
    from transferops.training import resolve_device

    resolved = resolve_weights(backbone, weights)
    if resolved is None:
        raise InputError(f"--weights {weights} means random weights; a source profile needs the pretrained weights")
    src = SourceModel(f"{backbone}:{weights}", backbone, resolved, None, "none")
    images = scan_dataset(data, settings.data.val_fraction, settings.data.test_fraction)
    meta = {"backbone": backbone, "weights": str(weights), "data": str(Path(data).resolve()),
            "transforms": transforms_spec(src.weights), "source_categories": len(src.categories)}
    return embed_images(source_network(src), images, None, src.weights, size or settings.drift.profile_size,
                        settings.training.batch_size, resolve_device(settings.training.device), meta)
