"""Run alibi-detect's ``MMDDrift`` (pytorch backend) on pairs of embeddings; write JSON.

Run it with the benchmark-only venv's python (``bench/drift/setup_alibi_env.sh`` makes it);
the drift benchmark calls it as a subprocess:

    bench/drift/.venv-alibi/bin/python bench/drift/alibi_worker.py IN.npz OUT.json \
        [--n-permutations 100] [--seed 0] [--threads N]

IN.npz holds ``x_ref_<i>`` and ``x_<i>`` for i = 0..k-1 (float32, shape (n, d)); arrays are
passed to alibi as stored (no cast). For each pair the worker builds
``MMDDrift(x_ref, backend='pytorch', p_val=0.05, n_permutations=N, device='cpu')`` with
alibi's defaults (GaussianRBF kernel, bandwidth inferred from ``x_ref`` by the median
heuristic at construction, no preprocess_fn), calls ``predict(x)`` and records, per pair:

- ``p_val``: permutation p-value; ``is_drift``: ``p_val < 0.05``;
- ``distance``: the observed MMD^2; ``distance_threshold``: alibi's MMD^2 cut-off (the
  permuted MMD^2 at descending-sorted index ``int(0.05 * N)``);
- ``threshold``: what alibi's ``predict`` reports under that name, i.e. the p-value
  threshold (0.05), not an MMD^2 value;
- ``sigma``: the inferred kernel bandwidth(s);
- ``fit_s`` / ``predict_s``: ``time.perf_counter`` wall seconds of construction (which includes
  the median heuristic and the k(x_ref, x_ref) kernel matrix) and of ``predict``.

What alibi-detect 0.13.0 does (``alibi_detect/cd/pytorch/mmd.py``,
``alibi_detect/utils/pytorch/{kernels,distance}.py``):

- sigma: squared distances D = ||x_i - x_j||^2 over x_ref x x_ref (clamped at 1e-30); with
  N = len(x_ref), sigma = sqrt(0.5 * sort(D.flatten())[N + (N*N - N)//2 - 1]), i.e. the lower
  median of the off-diagonal squared distances (the N zero diagonal entries are skipped), so
  k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) = exp(-||x - y||^2 / median_sqdist). Inferred once
  from x_ref at construction, not from the pooled sample.
- statistic: unbiased MMD^2 (U-statistic): diagonal of the joint kernel matrix zeroed, then
  sum(K_xx)/(n(n-1)) + sum(K_yy)/(m(m-1)) - 2 mean(K_xy).
- permutations: ``torch.randperm(n + m)`` per permutation, applied to rows and columns of the
  precomputed joint kernel matrix. It uses torch's *global* default generator (no generator
  argument), so ``torch.manual_seed(seed)`` before each pair makes the run reproducible;
  numpy's RNG is not used by the test but is seeded too.
- p-value: mean(mmd2_obs <= mmd2_perm) over the N permutations, with no +1 correction (it can
  be exactly 0).

No network is used at run time (HF/transformers are forced offline; alibi imports transformers).
"""

from __future__ import annotations

import os

# Before any import that might read them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

# alibi's import pulls in torch.jit.script (FutureWarning on torch 2.14) and may log about
# missing optional backends (TensorFlow, KeOps); none of it matters here.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r".*[Tt]ensor[Ff]low.*")
logging.getLogger("alibi_detect").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import alibi_detect  # noqa: E402
from alibi_detect.cd import MMDDrift  # noqa: E402

P_VAL = 0.05


def load_pairs(path: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    with np.load(path) as z:
        keys = set(z.files)
        idx = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"x_ref_(\d+)", k)))
        if not idx:
            raise SystemExit(f"{path}: no x_ref_<i> arrays (found {sorted(keys)})")
        pairs = []
        for i in idx:
            if f"x_{i}" not in keys:
                raise SystemExit(f"{path}: x_ref_{i} has no matching x_{i}")
            pairs.append((i, z[f"x_ref_{i}"], z[f"x_{i}"]))
    return pairs


def run_pair(i: int, x_ref: np.ndarray, x: np.ndarray, n_permutations: int, seed: int) -> dict:
    torch.manual_seed(seed)  # alibi's torch.randperm draws from the global generator
    np.random.seed(seed)
    t0 = time.perf_counter()
    cd = MMDDrift(x_ref, backend="pytorch", p_val=P_VAL, n_permutations=n_permutations, device="cpu")
    t1 = time.perf_counter()
    pred = cd.predict(x)
    t2 = time.perf_counter()
    data = pred["data"]
    sigma = cd._detector.kernel.sigma.detach().cpu().numpy().reshape(-1).tolist()
    return {
        "index": i,
        "n_ref": int(x_ref.shape[0]),
        "n": int(x.shape[0]),
        "d": int(np.prod(x.shape[1:])),
        "dtype": str(x.dtype),
        "p_val": float(data["p_val"]),
        "distance": float(data["distance"]),
        "distance_threshold": float(data["distance_threshold"]),
        "threshold": float(data["threshold"]),
        "is_drift": bool(data["is_drift"]),
        "sigma": sigma,
        "n_permutations": n_permutations,
        "seed": seed,
        "fit_s": t1 - t0,
        "predict_s": t2 - t1,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("inp", metavar="IN.npz")
    ap.add_argument("out", metavar="OUT.json")
    ap.add_argument("--n-permutations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = load_pairs(args.inp)
    results = []
    for i, x_ref, x in pairs:
        r = run_pair(i, x_ref, x, args.n_permutations, args.seed)
        results.append(r)
        print(
            f"[alibi] pair {i}: ref {x_ref.shape} vs {x.shape} p_val={r['p_val']:.4f} "
            f"mmd2={r['distance']:.6g} drift={r['is_drift']} fit={r['fit_s']:.3f}s predict={r['predict_s']:.3f}s",
            file=sys.stderr,
            flush=True,
        )

    out = {
        "alibi_detect_version": alibi_detect.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "threads": torch.get_num_threads(),
        "n_permutations": args.n_permutations,
        "seed": args.seed,
        "results": results,
    }
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
