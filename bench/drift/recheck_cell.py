"""Re-run power cells of ``bench_drift.py`` with many fresh trials: ours vs alibi-detect, same pairs.

``bench_drift.py`` uses 30 trials per power cell, so a one-trial gap is noise. This script takes
cells as ``SHIFT/LEVEL/N`` (default: those the last full run listed as lower), draws ``--trials``
new pairs (part 9, never used by the full run) and reports both detection rates with an exact
one-sided McNemar p-value for "alibi detects more often".

    .venv/bin/python bench/drift/recheck_cell.py [contrast/weak/100 ...] [--trials 300]

Writes ``drift_recheck.json`` and ``drift_recheck.md`` to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE)]
import bench_drift as bench  # noqa: E402
from embeddings import DEFAULT_OUT, load_embeddings  # noqa: E402

from transferops.drift import MMDDrift  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", nargs="*", help="SHIFT/LEVEL/N; default: the lower cells of results/drift.json")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE.parent / "results")
    args = ap.parse_args(argv)
    cells = args.cells or [c.split(":")[0] for c in json.loads((args.out / "drift.json").read_text())["summary"]["power_lower"]]
    arrays, _ = load_embeddings(DEFAULT_OUT)
    data = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    torch.set_num_threads(1)
    rows = []
    for ci, cell in enumerate(cells):
        shift, level, n = cell.split("/")
        n = int(n.removeprefix("n="))
        t0 = time.perf_counter()
        pairs = [bench.draw(data, 9, ci, t, n, shift, level) for t in range(args.trials)]
        ours = [MMDDrift(r[0], p_val=bench.ALPHA, n_permutations=bench.N_PERM, seed=t).predict(x[0]).p_val
                for t, (r, x) in enumerate(pairs)]
        with tempfile.TemporaryDirectory() as tmp:
            arrs = {f"x_ref_{i}": r[0] for i, (r, _) in enumerate(pairs)} | {f"x_{i}": x[0] for i, (_, x) in enumerate(pairs)}
            alibi = [r["p_val"] for r in bench.run_worker(arrs, Path(tmp), 9000 + ci, threads=1)]
        rows.append({"cell": f"{shift}/{level}/n={n}", "trials": args.trials, "ours": bench.rate(ours),
                     "alibi": bench.rate(alibi), "mcnemar_p_alibi_better": bench.mcnemar_p(ours, alibi)})
        print(f"{rows[-1]['cell']}: ours {rows[-1]['ours']['rate']:.3f}, alibi {rows[-1]['alibi']['rate']:.3f}, "
              f"McNemar p {rows[-1]['mcnemar_p_alibi_better']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    md = ["# Power re-check: more trials on the cells where ours was lower", "",
          "| cell | trials | ours | alibi-detect | McNemar p (alibi better) |", "|---|---|---|---|---|"]
    md += [f"| {r['cell']} | {r['trials']} | {bench.fmt(r['ours'])} | {bench.fmt(r['alibi'])} | "
           f"{r['mcnemar_p_alibi_better']:.3f} |" for r in rows]
    (args.out / "drift_recheck.json").write_text(json.dumps({"info": bench.INFO, "rows": rows}, indent=1))
    (args.out / "drift_recheck.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
