"""Source specs, opening sources, the `auto` precondition and champion evaluation: core only, no server."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from transferops.assessment import DriftOutcome, measure_drift, pick_strategy
from transferops.config import load_settings
from transferops.data import scan_dataset
from transferops.drift.profile import Profile
from transferops.engine import evaluate_champion, evaluate_on_test
from transferops.errors import InputError
from transferops.models import build_model, load_bundle, save_bundle
from transferops.sources import open_source, parse_source, source_from_profile


def test_parse_source_kinds(tmp_path, source_bundle):
    assert parse_source("models:/m@champion").kind == "registry"
    assert parse_source("models:/m/3").kind == "registry"
    ref = parse_source("resnet50:IMAGENET1K_V2")
    assert (ref.kind, ref.backbone, ref.weights) == ("enum", "resnet50", "IMAGENET1K_V2")
    assert parse_source(str(source_bundle)).kind == "bundle"
    pt = tmp_path / "w.pt"
    torch.save(build_model("resnet18", 3).state_dict(), pt)
    ref = parse_source(str(pt), backbone="resnet18")
    assert (ref.kind, ref.backbone, ref.weights) == ("file", "resnet18", str(pt))
    assert parse_source("models:/a@b").cache_key == parse_source("models:/a@b").cache_key != parse_source("models:/a@c").cache_key


@pytest.mark.parametrize("spec,backbone,match", [
    ("", None, "source is empty"),
    ("no/such/file.pt", None, "neither a registered model"),
    ("resnet18", None, "neither a registered model"),
])
def test_bad_source_specs_name_the_fix(spec, backbone, match):
    with pytest.raises(InputError, match=match):
        parse_source(spec, backbone)


def test_a_weights_file_needs_its_backbone(tmp_path):
    pt = tmp_path / "w.pt"
    pt.write_bytes(b"x")
    with pytest.raises(InputError, match="also pass --backbone"):
        parse_source(str(pt))


def test_open_a_bundle_with_its_own_or_an_explicit_profile(tmp_path, source_bundle, shapes_dir):
    src = open_source(parse_source(str(source_bundle)))
    assert src.backbone == "resnet18" and src.categories == ["a", "b", "c"] and src.profile is not None
    assert src.profile_origin.endswith("profile.npz") and src.weights.transforms().crop_size == [32]
    other = tmp_path / "other.npz"
    Profile(np.ones((12, src.profile.embeddings.shape[1]), np.float32)).save(other)
    assert len(open_source(parse_source(str(source_bundle)), profile=other).profile) == 12
    with pytest.raises(InputError, match="does not exist"):
        open_source(parse_source(str(source_bundle)), profile=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="fetch its bundle first"):
        open_source(parse_source("models:/x@champion"))
    bare = tmp_path / "bare"
    shutil.copytree(source_bundle, bare)
    (bare / "profile.npz").unlink()
    assert open_source(parse_source(str(bare))).profile is None


def test_enum_sources_name_weights_without_loading_them():
    src = open_source(parse_source("resnet18:IMAGENET1K_V1"))
    assert src.backbone == "resnet18" and len(src.categories) == 1000 and src.profile is None
    with pytest.raises(InputError, match="unknown weights"):
        open_source(parse_source("resnet18:IMAGENET9K"))


def test_source_from_profile(tmp_path, source_bundle):
    p = tmp_path / "p.npz"
    Profile(np.ones((10, 4), np.float32), meta={"backbone": "resnet50", "weights": "IMAGENET1K_V2"}).save(p)
    ref = source_from_profile(p)
    assert (ref.spec, ref.kind, ref.backbone) == ("resnet50:IMAGENET1K_V2", "enum", "resnet50")
    Profile(np.ones((10, 4), np.float32), meta={"backbone": "resnet18", "weights": str(source_bundle)}).save(p)
    ref = source_from_profile(p)
    assert (ref.spec, ref.kind) == (str(source_bundle), "bundle")
    Profile(np.ones((10, 4), np.float32)).save(p)
    with pytest.raises(InputError, match="does not name its backbone"):
        source_from_profile(p)


def test_auto_decides_without_a_source_profile_and_records_the_shift_with_one(tmp_path, source_bundle, shapes_dir):
    # auto reads a linear probe on the source features, so a source without a profile is enough
    settings = load_settings(tmp_path)
    src = open_source(parse_source(str(source_bundle)))
    images = scan_dataset(shapes_dir)
    no_profile = DriftOutcome(None, f"source {src.uri} has no profile")
    choice = pick_strategy(settings, "auto", src, images, no_profile)
    assert choice.name in ("feature_extraction", "lp_ft", "full_finetune", "scratch")
    assert choice.evidence["similarity"] is None and choice.evidence["probe_accuracy"] is not None
    assert "training images per class" in choice.reason and "transferab" in choice.reason
    assert pick_strategy(settings, "partial_finetune", src, images, no_profile).name == "partial_finetune"
    drift = measure_drift(settings, src, images)
    assert drift.report is not None and 0 <= drift.similarity <= 1
    choice = pick_strategy(settings, "auto", src, images, drift)
    assert choice.evidence["similarity"] == drift.similarity and choice.evidence["shift_p_val"] is not None


def test_measuring_drift_without_a_profile_gives_the_reason(tmp_path, source_bundle, shapes_dir):
    bare = tmp_path / "bare"
    shutil.copytree(source_bundle, bare)
    (bare / "profile.npz").unlink()
    out = measure_drift(load_settings(tmp_path), open_source(parse_source(str(bare))), scan_dataset(shapes_dir))
    assert out.report is None and out.similarity is None and "has no profile" in out.reason


def test_champion_with_another_class_set_is_not_scored(tmp_path, source_bundle, shapes_dir):
    settings = load_settings(tmp_path)
    images = scan_dataset(shapes_dir)  # circle, square, triangle
    other = load_bundle(source_bundle)  # categories a, b, c
    res = evaluate_champion(settings, other, "4", images)
    assert res.metrics is None and res.version == "4" and "has classes ['a', 'b', 'c']" in res.note
    assert evaluate_champion(settings, None, None, images).note == "no champion yet"
    torch.manual_seed(0)
    model = build_model("resnet18", len(images.classes)).eval()
    same = save_bundle(model, tmp_path / "same", backbone="resnet18", categories=images.classes,
                       transforms=other.meta["transforms"])
    res = evaluate_champion(settings, same, "5", images)
    direct = evaluate_on_test(settings, model, same.weights, images)
    assert res.metrics["accuracy"] == pytest.approx(direct["accuracy"]) and "same test split" in res.note


def test_drift_of_unlabelled_images_against_the_source(tmp_path, source_bundle):
    from transferops.samples import write_shapes

    batch = tmp_path / "batch"
    for i, f in enumerate(sorted(write_shapes(tmp_path / "s", per_class=20, classes=3, style="shifted").rglob("*.png"))):
        day = batch / f"2026-11-0{i % 3 + 1}"  # date folders: not classes
        day.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, day / f"{i}.png")
    images = scan_dataset(batch, labels="none")
    assert not images.labelled and len(images.records) == 60
    out = measure_drift(load_settings(tmp_path), open_source(parse_source(str(source_bundle))), images, split=None)
    assert out.report is not None and out.report.per_class == {} and out.report.decision.n_test == 60
    assert out.report.decision.is_drift, "shifted shapes are far from the plain-shapes profile"
