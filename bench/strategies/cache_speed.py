"""Feature extraction on cached embeddings against the same strategy run end to end.

Side by side in one run, on one scenario tree of ``bench_strategies.py`` and its source
bundle: (a) one training epoch of the head on the cached embeddings and (b) one epoch
through the frozen backbone, both with the same batches and optimizer; then each
strategy's whole fit (L-BFGS on the cache; SGD through the frozen backbone under the
same step budget as every strategy) and its test accuracy. Prints and writes JSON and a
Markdown table (``bench/results/cache_speed.*``).

    .venv/bin/python bench/strategies/cache_speed.py bench/strategies/work/data/<target tree> <source bundle>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn


def _epoch_seconds(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    start = time.perf_counter()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree")
    ap.add_argument("bundle")
    ap.add_argument("--workdir", default="bench/strategies/work/cache-speed")
    ap.add_argument("--out", default="bench/results/cache_speed")
    args = ap.parse_args()

    from transferops.config import load_settings
    from transferops.data import scan_dataset
    from transferops.engine import evaluate_on_test, train_model
    from transferops.loading import make_loader
    from transferops.models import build_model, freeze, head_layer
    from transferops.sources import open_source, parse_source
    from transferops.strategy import StrategyChoice, strategy_params

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    s = load_settings(work)
    images = scan_dataset(args.tree, s.data.val_fraction, s.data.test_fraction)
    src = open_source(parse_source(args.bundle))
    n = len(images.classes)

    # (a) vs (b): one epoch, same images and batch size, head only
    model = freeze(build_model(src.backbone, n, weights=src.weights)).eval()
    loader = make_loader(images.split("train"), images.class_to_idx, src.weights.transforms(), batch_size=32, shuffle=False)
    batches = list(loader)
    with torch.inference_mode():
        feats = []
        hook = head_layer(model)[2].register_forward_hook(lambda _m, i, _o: feats.append(i[0].flatten(1).clone()))
        for x, _ in batches:
            model(x)
        hook.remove()
    cached = [(f.clone(), y) for f, (_, y) in zip(feats, batches, strict=True)]
    head = head_layer(model)[2]
    reps = 5
    end_to_end = min(_epoch_seconds(model, batches) for _ in range(reps))
    on_cache = min(_epoch_seconds(head, cached) for _ in range(reps))

    # whole fits: the strategy as shipped (cache + L-BFGS) and through the backbone by SGD
    rows = []
    for cache in (True, False):
        params = strategy_params("feature_extraction", s) | {"cache": cache}
        choice = StrategyChoice("feature_extraction", "bench", params)
        start = time.perf_counter()
        trained = train_model(s, src, choice, images, work / f"fe-cache{int(cache)}.pt", progress=False)
        seconds = time.perf_counter() - start
        acc = evaluate_on_test(s, trained.model, src.weights, images)["accuracy"]
        rows.append({"mode": "cached embeddings, L-BFGS" if cache else "end to end, SGD (same step budget)",
                     "fit_seconds": round(seconds, 2), "steps": trained.fit.steps, "test_accuracy": round(acc, 4)})
    result = {"tree": args.tree, "train_images": len(images.split("train")),
              "epoch_seconds_end_to_end": end_to_end, "epoch_seconds_on_cache": on_cache,
              "epoch_speedup": end_to_end / max(on_cache, 1e-9), "fits": rows, "torch_threads": torch.get_num_threads()}
    md = ["| measure | end to end | on the cache | ratio |", "|---|---|---|---|",
          f"| one head epoch ({result['train_images']} images, batch 32) | {end_to_end * 1000:.1f} ms | "
          f"{on_cache * 1000:.2f} ms | {result['epoch_speedup']:.0f}x |", "",
          "| feature_extraction fit | seconds | SGD steps | test accuracy |", "|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['fit_seconds']} | {r['steps']} | {r['test_accuracy']} |" for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
