"""Fashion-MNIST backbone embeddings, clean and under synthetic shifts, for the drift benchmark.

Design
------
* Backbone: a resnet18 from ``transferops.models.build_model`` trained from scratch with
  ``transferops.training`` on the first 50,000 Fashion-MNIST training images (seed 0, batch 128,
  AdamW with a one-cycle schedule, no augmentation). One function, ``preprocess``, turns uint8
  28x28 images into 3x32x32 normalised tensors for training and for embedding alike.
* Held-out pool: training images 50000..59999 plus the 10,000 test images. The model never
  trained on any of them, so the reference and the test side are both "deployment" data; a
  detector that compares against training data would instead flag the train/held-out gap.
* The pool is split, stratified by class under a seeded permutation, into two disjoint halves of
  10,000 (class counts differ by at most 1): pool A (reference) and pool B (test). Both are
  stored in a seeded random order, so the first n rows are a random sample.
* Shifts are applied to pool B's uint8 28x28 images *before* ``preprocess``; labels stay ``clean_y``.
  Gaussian noise draws from a numpy Generator seeded per (shift, level), so runs are repeatable.
* Label shift needs no extra arrays: the benchmark resamples clean pool B (``clean_*``) with
  skewed class weights using ``clean_y``.

Arrays in the ``.npz`` (float32 unless noted; emb is 512-d penultimate layer, prob is the 10-way softmax)
    ref_emb, ref_prob, ref_y (uint8), ref_idx (int32)       pool A, clean
    clean_emb, clean_prob, clean_y (uint8), clean_idx      pool B, clean
    {shift}_{level}_emb, {shift}_{level}_prob               pool B with the shift applied
      shift in gaussian_noise, blur, rotation, contrast; level in weak, medium, strong
    ``*_idx``: source image; i < 60000 is training image i, 60000 + j is test image j.
    meta: JSON string (levels, test accuracy, seed, timings, per-array accuracy, mean-shift ratios).
    levels: JSON string {shift: {level: parameter}} (also in meta["levels"]).
Load with ``load_embeddings(path) -> (arrays, meta)``; this module imports torch only inside functions.

    .venv/bin/python bench/drift/embeddings.py [--out PATH] [--epochs 2] [--limit N] [--threads 2] [--force]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

FMNIST = Path("/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / ".cache" / "fmnist_embeddings.npz"
LEVEL_NAMES = ("weak", "medium", "strong")
# Parameter per level: noise sigma (0..255 scale), PIL blur radius, rotation degrees (counter-clockwise),
# contrast factor. Tuned with an RBF-MMD permutation test (median heuristic, p < 0.05) against pool A:
# weak is rejected about as often as clean at n=100 (<= 0.10) but always at n=5000; medium in about
# 20-65% of draws at n=100 and always at n=500; strong always at n=100.
SHIFTS = {
    "gaussian_noise": (15.0, 25.0, 60.0),
    "blur": (0.75, 1.0, 2.0),
    "rotation": (3.0, 8.0, 30.0),
    "contrast": (0.85, 0.7, 0.4),
}
N_TRAIN = 50_000


def load_embeddings(path: str | Path = DEFAULT_OUT) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of a cache file and its metadata (``meta`` JSON, decoded)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("meta", "levels")}
        meta = json.loads(str(z["meta"]))
    return arrays, meta


def load_idx(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28).copy()  # writable, for torch
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).copy()
    return x, y


def preprocess(x: np.ndarray, mean: float, std: float):
    """uint8 (n, 28, 28) -> float32 tensor (n, 3, 32, 32): bilinear resize, normalise, gray to 3 channels."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0).unsqueeze(1)
    t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    return ((t - mean) / std).expand(-1, 3, -1, -1).contiguous()


def make_loader(x: np.ndarray, y: np.ndarray, mean: float, std: float, batch_size: int, shuffle: bool, seed: int = 0):
    """A DataLoader over uint8 images that preprocesses whole batches in its collate function."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))

    def collate(batch):
        xs = np.stack([b[0].numpy() for b in batch])
        return preprocess(xs, mean, std), torch.stack([b[1] for b in batch])

    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate, num_workers=0)


def apply_shift(x: np.ndarray, shift: str, param: float, rng: np.random.Generator) -> np.ndarray:
    """Shift uint8 (n, 28, 28) images; returns uint8 of the same shape."""
    from PIL import Image, ImageFilter

    if shift == "gaussian_noise":
        return np.clip(np.rint(x + rng.normal(0.0, param, x.shape)), 0, 255).astype(np.uint8)
    if shift == "contrast":
        m = x.reshape(len(x), -1).mean(1)[:, None, None]
        return np.clip(np.rint(m + param * (x - m)), 0, 255).astype(np.uint8)
    if shift == "blur":
        op = lambda im: im.filter(ImageFilter.GaussianBlur(radius=param))  # noqa: E731
    elif shift == "rotation":
        op = lambda im: im.rotate(param, resample=Image.BILINEAR, fillcolor=0)  # noqa: E731
    else:
        raise ValueError(f"unknown shift {shift!r}")
    return np.stack([np.asarray(op(Image.fromarray(img))) for img in x])


def split_pool(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified halves of range(len(y)): permute, stable-sort by class, alternate; then shuffle each half."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    a, b = order[0::2], order[1::2]
    return a[rng.permutation(len(a))], b[rng.permutation(len(b))]


def train_backbone(x: np.ndarray, y: np.ndarray, mean: float, std: float, epochs: int, seed: int, lr: float):
    import torch
    from torch import nn

    from transferops.models import build_model
    from transferops.training import make_optimizer, resolve_device, seed_everything, train_one_epoch

    seed_everything(seed)
    device = resolve_device("auto")
    model = build_model("resnet18", num_classes=10, weights=None).to(device)
    loader = make_loader(x, y, mean, std, batch_size=128, shuffle=True, seed=seed)
    opt = make_optimizer(model, lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.25)

    def on_batch(i: int, n: int) -> None:
        sched.step()
        if sys.stdout.isatty() and (i % 50 == 0 or i == n):
            print(f"\r  batch {i}/{n}", end="", flush=True)

    for epoch in range(epochs):
        m = train_one_epoch(model, nn.CrossEntropyLoss(), opt, loader, device, epoch, on_batch=on_batch)
        print(f"\r  epoch {epoch}: loss {m['loss']:.4f} train acc {m['accuracy']:.4f} "
              f"{m['images'] / m['seconds']:.0f} img/s ({m['seconds']:.0f} s)", flush=True)
    return model, device


def embed(model, device, x: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    from transferops.training import extract_embeddings

    loader = make_loader(x, np.zeros(len(x), np.int64), mean, std, batch_size=512, shuffle=False)
    emb, prob = extract_embeddings(model, loader, device)
    return emb.astype(np.float32), prob.astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="smoke test: N images per pool, 4N training images")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="recompute even if --out exists")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; pass --force to recompute")
        return
    if not FMNIST.is_dir():
        raise SystemExit(f"{FMNIST} is missing; apt-get install dataset-fashion-mnist")
    import torch
    from torch import nn

    from transferops.training import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    xtr, ytr = load_idx(FMNIST / "train-images-idx3-ubyte.gz", FMNIST / "train-labels-idx1-ubyte.gz")
    xte, yte = load_idx(FMNIST / "t10k-images-idx3-ubyte.gz", FMNIST / "t10k-labels-idx1-ubyte.gz")
    n_train = N_TRAIN if args.limit is None else min(N_TRAIN, 4 * args.limit)
    x_fit, y_fit = xtr[:n_train], ytr[:n_train]
    mean, std = float(x_fit.mean() / 255.0), float(x_fit.std() / 255.0)
    print(f"training resnet18 on {n_train} images, {args.epochs} epoch(s), mean {mean:.4f} std {std:.4f}")
    t = time.perf_counter()
    model, device = train_backbone(x_fit, y_fit, mean, std, args.epochs, args.seed, args.lr)
    timings["train_s"] = time.perf_counter() - t
    n_test = len(xte) if args.limit is None else args.limit
    ev = evaluate(model, nn.CrossEntropyLoss(), make_loader(xte[:n_test], yte[:n_test], mean, std, 512, False),
                  device, num_classes=10)
    print(f"test accuracy {ev['accuracy']:.4f} (macro F1 {ev['macro_f1']:.4f}) on {n_test} test images")

    pool_x = np.concatenate([xtr[N_TRAIN:], xte])
    pool_y = np.concatenate([ytr[N_TRAIN:], yte])
    pool_idx = np.concatenate([np.arange(N_TRAIN, len(xtr)), len(xtr) + np.arange(len(xte))]).astype(np.int32)
    ia, ib = split_pool(pool_y, args.seed)
    if args.limit is not None:
        ia, ib = ia[:args.limit], ib[:args.limit]
    out: dict[str, np.ndarray] = {"ref_y": pool_y[ia], "ref_idx": pool_idx[ia],
                                  "clean_y": pool_y[ib], "clean_idx": pool_idx[ib]}
    t = time.perf_counter()
    out["ref_emb"], out["ref_prob"] = embed(model, device, pool_x[ia], mean, std)
    out["clean_emb"], out["clean_prob"] = embed(model, device, pool_x[ib], mean, std)
    xb = pool_x[ib]
    shift_s = 0.0
    for si, (shift, params) in enumerate(SHIFTS.items()):
        for li, (level, param) in enumerate(zip(LEVEL_NAMES, params)):
            ts = time.perf_counter()
            xs = apply_shift(xb, shift, param, np.random.default_rng([args.seed, si, li]))
            shift_s += time.perf_counter() - ts
            out[f"{shift}_{level}_emb"], out[f"{shift}_{level}_prob"] = embed(model, device, xs, mean, std)
            print(f"  {shift} {level} ({param:g}) done", flush=True)
    timings["shift_s"] = shift_s
    timings["embed_s"] = time.perf_counter() - t - shift_s

    # sanity: ||mean(X) - mean(ref)|| relative to ||mean(clean) - mean(ref)||, and accuracy from the softmax
    mu_ref = out["ref_emb"].mean(0)
    base = float(np.linalg.norm(out["clean_emb"].mean(0) - mu_ref))
    ratios, accs = {}, {"ref": float((out["ref_prob"].argmax(1) == out["ref_y"]).mean())}
    for key in [k[:-4] for k in out if k.endswith("_emb") and k != "ref_emb"]:
        ratios[key] = float(np.linalg.norm(out[f"{key}_emb"].mean(0) - mu_ref)) / base
        accs[key] = float((out[f"{key}_prob"].argmax(1) == out["clean_y"]).mean())
        print(f"  {key:24s} mean-shift ratio {ratios[key]:7.2f}  accuracy {accs[key]:.4f}")
    timings["total_s"] = time.perf_counter() - t0
    levels = {s: dict(zip(LEVEL_NAMES, ps)) for s, ps in SHIFTS.items()}
    meta = {"levels": levels, "shifts": list(SHIFTS), "level_names": list(LEVEL_NAMES), "seed": args.seed,
            "epochs": args.epochs, "lr": args.lr, "n_train": n_train, "limit": args.limit,
            "test_accuracy": ev["accuracy"], "test_macro_f1": ev["macro_f1"], "n_test": n_test,
            "pool_accuracy": accs, "mean_shift_ratio": ratios, "norm_mean": mean, "norm_std": std,
            "backbone": "resnet18", "embedding_dim": int(out["ref_emb"].shape[1]), "input_size": 32,
            "torch_version": torch.__version__, "threads": torch.get_num_threads(), "timings": timings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **out, meta=np.array(json.dumps(meta)), levels=np.array(json.dumps(levels)))
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {timings['total_s']:.0f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))  # the repo root, so transferops imports without installing
    main()
