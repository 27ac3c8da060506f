"""How close is the monitor's accuracy estimate (no labels) to the true accuracy under shift?

A trained classifier (default: the strategy benchmark's source bundle, resnet18 at 32 px on
Fashion-MNIST classes 0-4) is calibrated as ``transferops.engine.write_calibration`` does, on
clean held-out images (the first half of the t10k images of its classes) and, for the
regression, on 300 of them under each synthetic shift of ``transferops.corruptions.PANEL``.
Each batch is the other half under one shift at one strength; for each, the true accuracy
(labels known here) against the estimates of ``transferops.estimate``: the regression (the
monitor's default) fitted **without the panel's shifts of the batch's family** (a rotated
batch is estimated by a regression that never saw a rotation: shifts in production are not
the panel's), the same with the whole panel, ATC with the support rule, plain ATC, and average
confidence. Target: mean absolute error at most 5 points.

    .venv/bin/python bench/monitor/estimate_bench.py [--bundle DIR] [--per-class 200] [--out bench/results/estimate]

Writes ``<out>.json`` and ``<out>.md``; needs Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench" / "strategies")]
import fashion  # noqa: E402


def _noise(sigma: float, im: np.ndarray, rng) -> np.ndarray:
    return np.clip(im + rng.normal(0, sigma, im.shape), 0, 255)


def _blur(radius: float, im: np.ndarray, rng) -> np.ndarray:
    return np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius)))


def _rotate(degrees: float, im: np.ndarray, rng) -> np.ndarray:
    return np.asarray(Image.fromarray(im).rotate(degrees))


def _contrast(factor: float, im: np.ndarray, rng) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(im)).enhance(factor))


def _invert(share: float, im: np.ndarray, rng) -> np.ndarray:
    return 255 - im if rng.random() < share else im


# shift -> strength -> a function of one grey uint8 image (28 x 28) and a generator
SHIFTS = {
    "clean": {"-": lambda im, rng: im},
    "noise": {f"sigma {s}": partial(_noise, s) for s in (15, 30, 60)},
    "blur": {f"radius {r}": partial(_blur, r) for r in (0.75, 1.5)},
    "rotate": {f"{d} deg": partial(_rotate, d) for d in (15, 30, 90)},
    "contrast": {f"x{c}": partial(_contrast, c) for c in (0.5, 0.25)},
    "invert": {f"{int(100 * f)} %": partial(_invert, f) for f in (0.25, 0.5, 1.0)},
}


def default_bundle() -> Path:
    found = sorted((REPO / "bench" / "strategies" / "work" / "source").glob("*/bundle/meta.json"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no source bundle under bench/strategies/work/source; run bench/strategies/bench_strategies.py "
                         "first, or pass --bundle DIR")
    return found[-1].parent


def model_outputs(model, weights, images: np.ndarray, corrupt=None) -> tuple[np.ndarray, np.ndarray]:
    """The model's embeddings and softmax outputs on grey uint8 images (after ``corrupt``, a
    ``transferops.corruptions.Corrupt``), preprocessed as in training, through
    ``transferops.training.extract_embeddings`` (what the monitor uses)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transferops.training import extract_embeddings

    tf = weights.transforms()
    pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB") for im in images]
    x = torch.stack([tf(corrupt(im) if corrupt else im) for im in pil])
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=256)
    return extract_embeddings(model, loader, torch.device("cpu"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the strategy benchmark's source)")
    p.add_argument("--per-class", type=int, default=200, help="test images per class in each batch (and in calibration)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "estimate")
    args = p.parse_args()
    import torch

    from transferops.config import MonitorConfig
    from transferops.corruptions import PANEL, Corrupt
    from transferops.estimate import fit_calibration
    from transferops.models import load_bundle, model_from_bundle

    torch.set_num_threads(2)
    bundle = load_bundle(args.bundle or default_bundle())
    model, classes = model_from_bundle(bundle), bundle.meta["categories"]
    try:
        x, y = fashion.load_split("test")
    except fashion.MissingData as e:
        raise SystemExit(str(e)) from None
    names = list(fashion.CLASSES)
    idx = {c: np.flatnonzero(y == names.index(c)) for c in classes}
    n = args.per_class
    cal = np.concatenate([v[:n] for v in idx.values()])
    test = np.concatenate([v[n:2 * n] for v in idx.values()])
    to_label = {names.index(c): i for i, c in enumerate(classes)}
    y_cal, y_test = np.array([to_label[v] for v in y[cal]]), np.array([to_label[v] for v in y[test]])
    t0 = time.perf_counter()
    reference = np.load(bundle.profile_path)["embeddings"]  # the model's training profile
    e_cal, p_cal = model_outputs(model, bundle.weights, x[cal])
    plain = fit_calibration(p_cal, y_cal)
    c = fit_calibration(p_cal, y_cal, embeddings=e_cal, reference=reference)
    # the engine's panel: an even spread of calibration_images held-out images under each shift
    size = MonitorConfig().calibration_images
    pick = np.linspace(0, len(cal) - 1, min(size, len(cal))).round().astype(int)
    panel = {(kind, s): model_outputs(model, bundle.weights, x[cal][pick], Corrupt(kind, s, i))
             for i, (kind, s) in enumerate(PANEL)}
    print(f"panel: {len(panel)} shifts x {len(pick)} images", file=sys.stderr)

    def regression(leave_out: str | None):
        entries = [(pr, y_cal[pick], em) for (kind, _), (em, pr) in panel.items() if kind != leave_out]
        return fit_calibration(p_cal, y_cal, method="regression", embeddings=e_cal, reference=reference, panel=entries)

    full = regression(None)
    rows = []
    for shift, levels in SHIFTS.items():
        left_out = full if shift == "clean" else regression(shift)
        for level, fn in levels.items():
            rng = np.random.default_rng(0)
            emb, probs = model_outputs(model, bundle.weights, np.stack([fn(im, rng) for im in x[test]]))
            true = float((probs.argmax(1) == y_test).mean())
            est = {"regression": left_out.estimate(probs, "regression", emb, reference),
                   "regression_full_panel": full.estimate(probs, "regression", emb, reference),
                   "atc_support": c.estimate(probs, "atc", emb, reference), "atc": plain.estimate(probs, "atc"),
                   "average_confidence": c.estimate(probs, "average_confidence")}
            rows.append({"shift": shift, "strength": level, "true": true, **est,
                         **{f"{k}_error": v - true for k, v in est.items()}})
            print(f"{shift:9s} {level:11s} true {true:.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in est.items()),
                  file=sys.stderr)
    methods = ("regression", "regression_full_panel", "atc_support", "atc", "average_confidence")
    mae = {k: float(np.mean([abs(r[f"{k}_error"]) for r in rows])) for k in methods}
    doc = {"bundle": str(bundle.path), "classes": classes, "per_class": n, "calibration": full.as_dict(),
           "panel": [list(k) for k in panel], "seconds": time.perf_counter() - t0, "rows": rows, "mae": mae}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Accuracy without labels on shifted Fashion-MNIST batches ({len(classes)} classes, {n} images per class)",
             "", f"Calibrated on {c.n} clean held-out images (accuracy {c.heldout_accuracy:.3f}, temperature "
             f"{c.temperature:.2f}; support radius at the {c.support_quantile:.0%} held-out distance to the "
             f"{len(reference)} training-profile embeddings) and, for the regression, on {len(pick)} of them under "
             f"each of the {len(panel)} shifts of `transferops.corruptions.PANEL`. Target: mean absolute error <= 5 "
             "points. `regression` is the monitor's default (`monitor.estimator: regression`) fitted **without the "
             "panel's shifts of the batch's family** (the clean row uses the whole panel); `full panel` is the same "
             "with every panel shift (what production fits; the panel's strengths differ from these). "
             "`ATC + support` is `monitor.estimator: atc` with the model's embeddings at hand, `plain ATC` the same "
             "without the support rule.", "",
             "| shift | strength | true accuracy | regression | error | full panel | error | ATC + support | error "
             "| plain ATC | error | average confidence | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shift']} | {r['strength']} | {r['true']:.3f} | "
              + " | ".join(f"{r[k]:.3f} | {100 * r[f'{k}_error']:+.1f}" for k in methods) + " |" for r in rows]
    lines += ["", "Mean absolute error: " + ", ".join(f"{k} {100 * v:.1f} points" for k, v in mae.items())
              + f" ({'PASS' if mae['regression'] <= 0.05 else 'FAIL'} for the default, its shift family left out)."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
