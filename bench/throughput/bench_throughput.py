"""Training and feature-extraction throughput: a plain eager fp32 loop against transferops' engine.

Side by side in one process, on the same model, images and batch size:

* ``plain``: the loop a user writes from the torchvision tutorial: fp32, contiguous tensors,
  SGD with momentum, ``loss.item()`` and the accuracy counted on the host after every step,
  ``DataLoader(batch_size=B, shuffle=True)`` with its defaults (no workers, no pinned memory);
  feature extraction as ``with torch.no_grad(): model(x)``.
* ``engine``: ``transferops.training.train_one_epoch`` with ``make_optimizer`` (fused AdamW),
  bf16 autocast, ``channels_last`` and ``torch.compile`` as the training settings say (each
  CUDA only, each can be turned off), metrics kept on the device and read once per epoch, and
  the project's loaders (``transferops.loading.make_loader``: workers, pinned memory and
  persistent workers on CUDA); feature extraction by ``transferops.features.extract_features``.

Inputs: ``synthetic`` (random uint8 images already in memory, so the loop alone is timed) and
``real`` (Fashion-MNIST PNGs decoded every epoch from an ImageFolder tree, resized to the
model's input side). Each cell warms both loops up with ``--warmup`` untimed steps
(compilation, cuDNN's kernel choice, the allocator; peak GPU memory is read there), then times
``--steps`` steps of plain and engine in turn, ``--repeats`` times, synchronising CUDA around
each, and reports the medians: a noisy machine slows both loops alike, so the ratio holds.

Targets (issue 13) on one H100: the engine at least 2.5x the plain loop on ResNet-50 training,
at least 3,500 images/s for ResNet-50 training at 224 px on synthetic input, real-data training
within 15 % of the synthetic rate. On CPU the benchmark runs at small scale (resnet18 at 32 px)
and the engine must not be slower than the plain loop.

    .venv/bin/python bench/throughput/bench_throughput.py            # CPU: resnet18 at 32 px
    .venv/bin/python bench/throughput/bench_throughput.py --gpu      # CUDA: resnet18/50, vit_b_16 at 224 px

Writes ``bench/results/throughput[_gpu].{json,md}``; the real-data cells need Debian's
``dataset-fashion-mnist`` (they are left out, with the reason, without it).
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
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench" / "strategies")]

from transferops.config import TrainingConfig  # noqa: E402
from transferops.models import build_model  # noqa: E402
from transferops.training import make_optimizer, prepare_model, resolve_device, train_one_epoch  # noqa: E402

CPU_MODELS, GPU_MODELS = ("resnet18",), ("resnet18", "resnet50", "vit_b_16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Synthetic(Dataset):
    """``n`` random normalised images, made once: the loader costs nothing but the collation."""

    def __init__(self, n: int, side: int, classes: int = 10):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, side, side, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def _real_records(side: int, n: int) -> tuple[list, dict[str, int]] | str:
    """Fashion-MNIST t10k as an ImageFolder of PNGs (written once), as records; or why not."""
    import fashion
    from PIL import Image

    from transferops.data import scan_dataset

    root = HERE / "work" / "fmnist-t10k"
    done = root / ".complete"
    if not (done.exists() and int(done.read_text()) >= n):
        try:
            x, y = fashion.load_split("test")
        except fashion.MissingData as exc:
            return str(exc)
        for i in range(min(n, len(x))):
            d = root / fashion.CLASSES[int(y[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i:05d}.png")
        done.write_text(str(n))
    images = scan_dataset(root, 0.0, 0.01)
    return images.records[:n], images.class_to_idx


def _real_loader(records: list, class_to_idx: dict[str, int], side: int, batch: int, engine: bool,
                 cfg: TrainingConfig, device: torch.device) -> tuple[DataLoader, Callable | None]:
    """Decoded PNGs resized to ``side``: the tutorial's ImageFolder way, or the project's loader;
    and the batch part of the preprocessing that runs on the device (None: all in the loader)."""
    from torchvision.transforms._presets import ImageClassification

    from transferops.loading import ImageDataset, make_loader, split_preprocessing

    # weights.transforms() of a torchvision backbone, at the benchmark's side
    tf = ImageClassification(crop_size=side, resize_size=side)
    if not engine:
        return DataLoader(ImageDataset(records, class_to_idx, tf), batch_size=batch, shuffle=True), None
    per_image, per_batch = tf, None
    if cfg.device_preprocess and device.type == "cuda":  # as the engine's loaders: uint8 over the bus
        per_image, per_batch = split_preprocessing(tf)
    return make_loader(records, class_to_idx, per_image, batch_size=batch, shuffle=True, seed=0,
                       num_workers=cfg.loader_workers(device), device=device), per_batch


def _repeat(loader: DataLoader, steps: int):
    """``steps`` batches, cycling the loader (a new epoch when it runs out)."""
    done = 0
    while done < steps:
        for batch in loader:
            yield batch
            done += 1
            if done >= steps:
                return


def plain_train(model: nn.Module, loader: DataLoader, device: torch.device) -> Callable[[int], None]:
    """The torchvision tutorial's loop, as a function of the number of steps to run."""
    model.to(device).train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)

    def steps(k: int) -> None:
        running_loss, correct = 0.0, 0
        for inputs, labels in _repeat(loader, k):
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            correct += (outputs.argmax(1) == labels).sum().item()

    return steps


def engine_train(model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainingConfig,
                 batch_transform: Callable | None = None) -> Callable[[int], None]:
    """transferops' training step as ``fit`` runs it (prepared model, fused AdamW, device-side metrics)."""
    net = prepare_model(model, device, channels_last=cfg.channels_last, compile=cfg.compile,
                        cudnn_benchmark=cfg.cudnn_benchmark)
    optimizer = make_optimizer(model, lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    def steps(k: int) -> None:
        train_one_epoch(net, criterion, optimizer, _Steps(loader, k), device, 0, amp=cfg.amp, channels_last=cfg.channels_last,
                        batch_transform=batch_transform)

    return steps


class _Steps:
    """A loader view that yields ``steps`` batches (``train_one_epoch`` takes one epoch of its loader)."""

    def __init__(self, loader: DataLoader, steps: int):
        self.loader, self.steps = loader, steps

    def __iter__(self):
        return _repeat(self.loader, self.steps)

    def __len__(self) -> int:
        return self.steps


def plain_extract(model: nn.Module, loader: DataLoader, device: torch.device) -> Callable[[int], None]:
    model.to(device).eval()

    def steps(k: int) -> None:
        with torch.no_grad():
            for inputs, _ in _repeat(loader, k):
                model(inputs.to(device)).cpu()

    return steps


def engine_extract(model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainingConfig,
                   batch_transform: Callable | None = None) -> Callable[[int], None]:
    from transferops.features import extract_features

    def steps(k: int) -> None:
        extract_features(model, _Steps(loader, k), device, amp=cfg.amp, channels_last=cfg.channels_last,
                         batch_transform=batch_transform)

    return steps


def _timed(fn: Callable[[int], None], device: torch.device, steps: int) -> float:
    _sync(device)
    start = time.perf_counter()
    fn(steps)
    _sync(device)
    return time.perf_counter() - start


def _peak_after_warmup(fn: Callable[[int], None], device: torch.device, warmup: int) -> float | None:
    """Run ``fn(warmup)`` (compilation, kernel choice, allocator) and return its peak GPU memory in GiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn(warmup)
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run(models: tuple[str, ...], side: int, batch: int, steps: int, warmup: int, repeats: int, device: torch.device,
        cfg: TrainingConfig, real_images: int) -> list[dict[str, Any]]:
    """One row per (model, task, input): the median images/s of plain and engine over ``repeats``
    alternating timings (so that a noisy machine slows both alike), their ratio, peak memory."""
    rows = []
    synthetic = DataLoader(_Synthetic(batch * 4, side), batch_size=batch, shuffle=True)
    real = _real_records(side, real_images)
    for name in models:
        for task in ("train", "extract"):
            for source in ("synthetic", "real"):
                row: dict[str, Any] = {"model": name, "task": task, "input": source, "side": side, "batch": batch,
                                       "steps": steps, "repeats": repeats}
                if source == "real" and isinstance(real, str):
                    rows.append(row | {"note": real})
                    continue
                fns = {}
                for mode in ("plain", "engine"):
                    torch.manual_seed(0)
                    model = build_model(name, 10)
                    loader, on_device = (synthetic, None) if source == "synthetic" else \
                        _real_loader(*real, side, batch, mode == "engine", cfg, device)
                    if task == "train":
                        fns[mode] = plain_train(model, loader, device) if mode == "plain" else \
                            engine_train(model, loader, device, cfg, on_device)
                    else:
                        fns[mode] = plain_extract(model, loader, device) if mode == "plain" else \
                            engine_extract(model, loader, device, cfg, on_device)
                    peak = _peak_after_warmup(fns[mode], device, warmup)
                    row[f"{mode}_peak_gib"] = None if peak is None else round(peak, 2)
                times: dict[str, list[float]] = {"plain": [], "engine": []}
                for _ in range(repeats):
                    for mode, fn in fns.items():
                        times[mode].append(_timed(fn, device, steps))
                for mode in fns:
                    row[f"{mode}_images_per_s"] = round(steps * batch / statistics.median(times[mode]), 1)
                row["ratio"] = round(row["engine_images_per_s"] / row["plain_images_per_s"], 2)
                print(f"{name} {task} {source}: plain {row['plain_images_per_s']} images/s, engine "
                      f"{row['engine_images_per_s']} ({row['ratio']}x)", file=sys.stderr)
                rows.append(row)
                del fns
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Throughput: plain loop vs transferops' engine ({meta['device']})", "",
             f"{meta['when']}, torch {meta['torch']}, batch {meta['batch']}, {meta['warmup']} warm-up steps, then the median "
             f"of {meta['repeats']} alternating timings of {meta['steps']} steps each; engine settings: {meta['engine']}.", "",
             "| model | task | input | plain images/s | engine images/s | engine / plain | peak GiB plain / engine |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ratio" not in r:
            lines.append(f"| {r['model']} | {r['task']} | {r['input']} | | | | {r['note']} |")
            continue
        peak = ("" if r["plain_peak_gib"] is None else f"{r['plain_peak_gib']} / {r['engine_peak_gib']}")
        lines.append(f"| {r['model']} | {r['task']} | {r['input']} | {r['plain_images_per_s']:,.0f} | "
                     f"{r['engine_images_per_s']:,.0f} | {r['ratio']:.2f}x | {peak} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="CUDA scale: resnet18, resnet50, vit_b_16 at 224 px")
    p.add_argument("--models", nargs="*", help="torchvision architectures (default: by scale)")
    p.add_argument("--side", type=int, help="input side in px (default 32 on CPU, 224 on CUDA)")
    p.add_argument("--batch", type=int, help="batch size (default 64 on CPU, 256 on CUDA)")
    p.add_argument("--steps", type=int, help="timed steps per cell (default 10 on CPU, 50 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 2 on CPU, 15 on CUDA)")
    p.add_argument("--repeats", type=int, default=3, help="alternating timings of plain and engine per cell (median)")
    p.add_argument("--real-images", type=int, default=10000, help="Fashion-MNIST t10k images for the real-data cells")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder for the JSON and markdown")
    args = p.parse_args()
    device = resolve_device("cuda" if args.gpu else "cpu")
    if args.gpu and device.type != "cuda":
        sys.exit("--gpu needs CUDA and torch.cuda.is_available() is False; run without --gpu for the CPU scale")
    gpu = device.type == "cuda"
    side, batch = args.side or (224 if gpu else 32), args.batch or (256 if gpu else 64)
    steps, warmup = args.steps or (50 if gpu else 10), args.warmup or (15 if gpu else 2)
    cfg = TrainingConfig()
    if gpu:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    rows = run(tuple(args.models or (GPU_MODELS if gpu else CPU_MODELS)), side, batch, steps, warmup, args.repeats,
               device, cfg, args.real_images)
    cpu = f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    meta = {"device": torch.cuda.get_device_name(device) if gpu else cpu,
            "when": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "batch": batch, "steps": steps, "warmup": warmup,
            "repeats": args.repeats,
            "engine": ", ".join(f"{k}={getattr(cfg, k)}" for k in ("amp", "channels_last", "compile", "cudnn_benchmark"))
            + (" (CUDA only: off here)" if not gpu else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "throughput_gpu" if gpu else "throughput"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
