"""How long does a monitor run over 10,000 production images take once the process is warm?

The strategy benchmark's source bundle (resnet18 at 32 px, the demo's image size, with its
training profile and the calibration ``estimate_bench.py`` fitted for it) plays the champion.
The batch is the 10,000 Fashion-MNIST t10k images as PNGs in one flat folder (unlabelled).
Timed, side by side in one process:

* ``transferops``: ``scan_dataset`` + ``transferops.monitoring.monitor_batch`` (decode, embed,
  every drift test, BBSD, class mix, the accuracy estimate): a first (cold) call, then
  ``--repeats`` warm calls;
* ``plain``: what a user would write from the torchvision tutorial to only *embed* the same
  images: ``ImageFolder``-style dataset, ``weights.transforms()``, ``DataLoader(batch_size=64)``,
  a forward pass; no tests at all.

Target (issue 11): the warm transferops run in at most 15 s on 2 CPU cores. The ratio to the
plain loop shows what the tests and the bookkeeping cost on top of embedding.

    .venv/bin/python bench/monitor/speed_bench.py [--bundle DIR] [--images 10000] [--repeats 3]

Writes ``bench/results/monitor_speed.{json,md}``; needs Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench" / "strategies")]
import fashion  # noqa: E402
from estimate_bench import default_bundle  # noqa: E402


def write_batch(folder: Path, n: int) -> Path:
    """The first ``n`` t10k images as grey PNGs in one flat folder (written once)."""
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return folder
    x, _ = fashion.load_split("test")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(x[i % len(x)]).save(folder / f"prod_{i:05d}.png")
    done.write_text(str(n))
    return folder


def plain_embed(bundle, folder: Path) -> float:
    """Seconds for the tutorial-style loop to embed every image of ``folder``."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from transferops.models import model_from_bundle

    class Flat(Dataset):
        def __init__(self, paths, tf):
            self.paths, self.tf = paths, tf

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            return self.tf(Image.open(self.paths[i]).convert("RGB"))

    t0 = time.perf_counter()
    model = model_from_bundle(bundle).eval()
    model.fc = torch.nn.Identity()
    paths = sorted(folder.glob("*.png"))
    out = []
    with torch.inference_mode():
        for x in DataLoader(Flat(paths, bundle.weights.transforms()), batch_size=64):
            out.append(model(x))
    assert sum(len(o) for o in out) == len(paths)
    return time.perf_counter() - t0


def ours(settings, bundle, folder: Path) -> tuple[float, dict]:
    from transferops.data import scan_dataset
    from transferops.monitoring import monitor_batch

    steps: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    batch = scan_dataset(folder, labels="none")
    result, _, _ = monitor_batch(settings, bundle, "bench", batch,
                                 progress=lambda m: steps.append((m, time.perf_counter() - t0)))
    seconds = time.perf_counter() - t0
    return seconds, {"n_embedded": result.n_embedded, "is_drift": result.is_drift, "p_val": result.p_val,
                     "estimated_accuracy": result.estimated_accuracy,
                     "steps": [{"step": m, "at_s": round(t, 3)} for m, t in steps]}


def with_calibration(bundle, workdir: Path):
    """The bundle as a trained model has it: with the calibration the estimate benchmark fitted
    for it (bench/results/estimate.json, the regression on the shift panel), so that the timed
    run estimates the accuracy as the monitor does. A copy, in ``workdir``."""
    import shutil

    from transferops.models import load_bundle
    from transferops.monitoring import CALIBRATION_FILE

    if (Path(bundle.path) / CALIBRATION_FILE).is_file():
        return bundle
    doc = json.loads((REPO / "bench" / "results" / "estimate.json").read_text())
    if Path(doc["bundle"]).resolve() != Path(bundle.path).resolve():
        raise SystemExit(f"bench/results/estimate.json calibrates {doc['bundle']}, not {bundle.path}; run "
                         "bench/monitor/estimate_bench.py --bundle on it first")
    copy = workdir / "bundle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle.path, copy)
    (copy / CALIBRATION_FILE).write_text(json.dumps(doc["calibration"], indent=1))
    return load_bundle(copy)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the strategy benchmark's source)")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3, help="warm runs of each side")
    p.add_argument("--workdir", type=Path, default=HERE / "work")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "monitor_speed")
    args = p.parse_args()
    import torch

    from transferops.config import Settings
    from transferops.models import load_bundle

    try:
        folder = write_batch(args.workdir / f"batch-{args.images}", args.images)
    except fashion.MissingData as e:
        raise SystemExit(str(e)) from None
    bundle = with_calibration(load_bundle(args.bundle or default_bundle()), args.workdir)
    project = args.workdir / "project"
    project.mkdir(parents=True, exist_ok=True)
    settings = Settings(project_dir=project)  # transferops' defaults
    settings.monitor.max_images = max(settings.monitor.max_images, args.images)
    cold, _ = ours(settings, bundle, folder)
    print(f"transferops cold: {cold:.2f} s", file=sys.stderr)
    runs: dict[str, list[float]] = {"transferops": [], "plain": []}
    detail = {}
    for i in range(args.repeats):  # interleaved, so both sides see the same machine
        s, detail = ours(settings, bundle, folder)
        runs["transferops"].append(s)
        runs["plain"].append(plain_embed(bundle, folder))
        print(f"repeat {i}: transferops {s:.2f} s, plain embedding {runs['plain'][-1]:.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    doc = {"images": args.images, "bundle": str(bundle.path), "backbone": bundle.meta.get("backbone"),
           "image_size": bundle.meta.get("transforms", {}).get("crop_size"), "cold_s": cold, "runs_s": runs,
           "median_s": med, "ratio_ours_to_plain": med["transferops"] / med["plain"], "last_run": detail,
           "target_s": 15.0, "pass": med["transferops"] <= 15.0,
           "environment": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Monitor speed: {args.images:,} production images, {doc['backbone']} at {doc['image_size']} px",
             "", f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"{doc['environment']['date']}; median of {args.repeats} warm runs, interleaved.", "",
             "| what | seconds |", "|---|---|",
             f"| transferops `monitor_batch` (scan, decode, embed, every drift test, BBSD, class mix, estimate), cold | {cold:.2f} |",
             f"| same, warm (target <= 15 s) | **{med['transferops']:.2f}** ({'PASS' if doc['pass'] else 'FAIL'}) |",
             f"| plain torchvision loop, embedding only | {med['plain']:.2f} |",
             f"| ratio transferops / plain | {doc['ratio_ours_to_plain']:.2f} |"]
    lines += ["", "Where the warm run's time goes (cumulative seconds at each step):", ""]
    lines += [f"- {s['at_s']:.2f} s: {s['step']}" for s in detail["steps"]] + [f"- {med['transferops']:.2f} s: done"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
