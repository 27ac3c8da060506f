"""Dataset-version benchmark on Fashion-MNIST (70,000 PNGs), side by side in one run.

1. ``transferops data add`` of the loose-PNG ImageFolder tree (validation + pack + dvc add
   + commit + push to a local folder remote), end to end as a user runs it, versus plain
   ``dvc add`` + ``dvc push`` of the same tree in a fresh repo.
2. Appending 1,000 new images as a second version: time and new remote bytes.
3. Training-time read throughput: the store's dataset versus torchvision's ImageFolder
   over the loose PNGs, same transform, same loader settings.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``). Writes ``bench/results/data_ingest.{json,md}``.

    .venv/bin/python bench/data_ingest.py [--workdir /tmp/bench-data] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def load_idx(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def write_tree(root: Path, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img).save(root / CLASSES[label] / f"{prefix}{i:05d}.png")


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return took


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_throughput(dataset, batch_size: int = 256) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    start = time.perf_counter()
    n = sum(len(b[1]) for b in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/transferops-bench-data"))
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke test)")
    args = p.parse_args()
    if not FMNIST.is_dir():
        raise SystemExit(f"{FMNIST} is missing; apt-get install dataset-fashion-mnist")
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect-home"))

    xtr, ytr = load_idx(FMNIST / "train-images-idx3-ubyte.gz", FMNIST / "train-labels-idx1-ubyte.gz")
    xte, yte = load_idx(FMNIST / "t10k-images-idx3-ubyte.gz", FMNIST / "t10k-labels-idx1-ubyte.gz")
    x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    tree = work / "fashion-mnist"
    print(f"writing {len(x)} PNGs to {tree} ...", flush=True)
    write_tree(tree, x, y, "img")
    new = work / "new-1000"  # new content: mirrored images never seen before
    write_tree(new, x[:1000, :, ::-1].copy(), y[:1000], "flip")
    tree_bytes = dir_bytes(tree)

    # Warm the Prefect database once, as any real installation has it.
    run([str(VENV_BIN / "transferops"), "init", "--workdir", str(work / "warm")], work, env)

    # 1a. transferops data add (end to end, a fresh process as a user runs it)
    proj = work / "transferops-project"
    proj.mkdir()
    # both sides start from an initialised repo with a remote (the baseline's git/dvc init is untimed too)
    run([str(VENV_BIN / "transferops"), "init", "--workdir", str(proj)], work, env)
    t_ours = run([str(VENV_BIN / "transferops"), "data", "add", str(tree), "--workdir", str(proj), "-m", "v1"], proj, env)
    remote_v1 = dir_bytes(proj / ".transferops" / "dvc-remote")
    # 2. append 1,000 new images
    t_append = run([str(VENV_BIN / "transferops"), "data", "add", str(new), "--workdir", str(proj), "-m", "v2"], proj, env)
    remote_v2 = dir_bytes(proj / ".transferops" / "dvc-remote")

    # 1b. plain DVC on the loose files, in a fresh repo with a folder remote
    base = work / "dvc-baseline"
    shutil.copytree(tree, base / "data")
    run(["git", "init", "-q"], base)
    run([str(VENV_BIN / "dvc"), "init", "-q"], base)
    run([str(VENV_BIN / "dvc"), "remote", "add", "-d", "storage", str(work / "dvc-baseline-remote")], base)
    t_dvc_add = run([str(VENV_BIN / "dvc"), "add", "data"], base)
    t_dvc_push = run([str(VENV_BIN / "dvc"), "push"], base)
    t_dvc = t_dvc_add + t_dvc_push

    # 3. read throughput, same transform and loader
    sys.path.insert(0, str(REPO))
    from torchvision import datasets, transforms

    from transferops.data import scan_dataset
    from transferops.loading import ImageDataset

    store = scan_dataset(proj / "data")
    tf = transforms.ToTensor()
    ours_ds = ImageDataset(store.records, store.class_to_idx, tf)
    tv_ds = datasets.ImageFolder(str(tree), transform=tf)
    rates = {"store": [], "imagefolder": []}
    for _ in range(2):  # alternate, so neither side gets the warmer cache
        rates["store"].append(read_throughput(ours_ds))
        rates["imagefolder"].append(read_throughput(tv_ds))
    r_ours, r_tv = max(rates["store"]), max(rates["imagefolder"])

    result = {
        "images": int(len(x)), "tree_bytes": tree_bytes, "cores": os.cpu_count(),
        "transferops_data_add_s": round(t_ours, 2), "dvc_add_s": round(t_dvc_add, 2), "dvc_push_s": round(t_dvc_push, 2),
        "dvc_add_push_s": round(t_dvc, 2), "speedup_vs_dvc": round(t_dvc / t_ours, 2),
        "append_1000_s": round(t_append, 2), "remote_bytes_v1": remote_v1, "append_remote_bytes": remote_v2 - remote_v1,
        "append_bytes_pct_of_v1": round(100 * (remote_v2 - remote_v1) / remote_v1, 3),
        "read_store_img_s": round(r_ours), "read_imagefolder_img_s": round(r_tv), "read_ratio": round(r_ours / r_tv, 2),
    }
    rows = [
        ("ingest 70k PNGs: `transferops data add` (validate + pack + dvc add + commit + push)", f"{t_ours:.1f} s"),
        ("ingest 70k PNGs: plain `dvc add` + `dvc push` of the loose files", f"{t_dvc:.1f} s ({t_dvc_add:.1f} + {t_dvc_push:.1f})"),
        ("speed-up", f"{t_dvc / t_ours:.1f}x"),
        ("append 1,000 new images as version 2 (`transferops data add`)", f"{t_append:.1f} s"),
        ("remote bytes: version 1 / added by version 2", f"{remote_v1:,} / {remote_v2 - remote_v1:,} ({result['append_bytes_pct_of_v1']:.2f} %)"),
        ("training read throughput: store / torchvision ImageFolder", f"{r_ours:,.0f} / {r_tv:,.0f} img/s ({r_ours / r_tv:.2f}x)"),
    ]
    table = "| measure | result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_ingest.json").write_text(json.dumps(result, indent=2))
    (out / "data_ingest.md").write_text(table)
    print(json.dumps(result, indent=2))
    print(table)


if __name__ == "__main__":
    main()
