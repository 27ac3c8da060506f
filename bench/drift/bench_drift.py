"""Drift-detector benchmark: transferops.drift versus alibi-detect's MMDDrift, side by side in one run.

Data: Fashion-MNIST resnet18 embeddings (512-d) and softmax outputs from ``bench/drift/embeddings.py``
(``bench/drift/.cache/fmnist_embeddings.npz``): pool A (``ref_*``, 10k clean), pool B (``clean_*``, 10k
clean, disjoint from A) and pool B under four image shifts x three levels (``{shift}_{level}_*``). The
reference side is always drawn from pool A and the test side from pool B, so the two never share an
image. Every draw comes from ``np.random.default_rng([part, cell, trial])`` and is a uniform sample
without replacement; ours and alibi see the *same* (ref, test) pairs. Everything is float32, alpha = 0.05,
100 permutations.

1. Calibration (no shift): 2n images drawn without replacement from the clean union of pools A and B and
   split at random into ref and test, n per side in {100, 500, 1000}, 400 trials each (with 200, an
   exact test still lands outside [0.02, 0.08] by chance in about 1 cell of 20) (detector seed =
   trial index). Drawing ref from A and test from B instead is *not* a clean null at large n: both pools are
   exactly class-balanced, so two samples from them differ less in class mix than two random samples do,
   and every test looks conservative (finite-population effect; 2.5% false alarms at n = 2000 for a test
   that holds 4% on draws from one pool). False-alarm rate of our MMDDrift, ClassifierDrift, KSDrift
   (max-KS permutation) and LabelShiftDrift (BBSD, the same KS test on softmax outputs), and of alibi's
   MMDDrift at n = 100 and 500, with 95% Clopper-Pearson intervals. Target: rate in [0.02, 0.08].
2. Power: four image shifts plus a class-proportion shift, three levels each, n in {100, 500, 1000}
   with 30 trials per cell, and n = 5000 with 2 trials at the weak level only (alibi costs about a minute
   per pair there). The class-proportion shift resamples clean pool B with one class (drawn per trial)
   weighted x2 / x4 / x8 (weak / medium / strong), i.e. about 18% / 31% / 47% of the test sample
   instead of 10%. Detection rate of our MMDDrift vs alibi's, plus our ClassifierDrift, KSDrift and BBSD.
   Where ours detects less often, an exact one-sided McNemar test on the discordant trials (only alibi
   detects vs only ours) says whether the deficit is beyond chance.
3. Speed (run first, on a quiet machine): 512-d embeddings, 100 permutations, n per side in {1000, 2000, 5000, 10000} (10k uses all of
   both pools). Ours: wall time of construction + predict, median of 3 runs, torch threads = 2.
   alibi: the worker's fit_s + predict_s, one run, torch threads = 2. Targets: alibi/ours >= 100x and
   ours < 2 s at 10k.

alibi-detect 0.13 needs numpy<2, so it runs in ``bench/drift/.venv-alibi`` (``setup_alibi_env.sh``)
through ``alibi_worker.py`` as a subprocess, many pairs per call (its start-up takes seconds). A worker
call uses one ``--seed`` for all its pairs (batch seed = 1000 * part + batch index). In parts 1 and 2
the alibi calls run in a background thread with 1 torch thread while ours runs with 1 thread (rates
only, no timings are taken there); part 3 runs the two one after the other with 2 threads each.
The machine may be shared: the load average is recorded next to the timings.

    .venv/bin/python bench/drift/bench_drift.py [--quick] [--out bench/results] [--emb PATH]

Writes ``drift.json`` (every rate, p-value and timing, machine info) and ``drift.md`` (tables) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE)]  # the repo root (transferops) and bench/drift (embeddings)
from embeddings import DEFAULT_OUT, load_embeddings  # noqa: E402

from transferops.drift import ClassifierDrift, KSDrift, LabelShiftDrift, MMDDrift  # noqa: E402

ALIBI_PY, WORKER = HERE / ".venv-alibi" / "bin" / "python", HERE / "alibi_worker.py"
ALPHA, N_PERM, LEVELS = 0.05, 100, ("weak", "medium", "strong")
LABEL_WEIGHT = {"weak": 2.0, "medium": 4.0, "strong": 8.0}
OURS = ("mmd", "classifier", "ks", "bbsd")
FULL = dict(calib_n=(100, 500, 1000), calib_trials=400, calib_alibi_n=(100, 500), power_n=(100, 500, 1000),
            power_trials=30, big_n=5000, big_trials=2, speed_n=(1000, 2000, 5000, 10000), speed_reps=3)
QUICK = dict(calib_n=(100, 500), calib_trials=20, calib_alibi_n=(100,), power_n=(100, 500), power_trials=3,
             big_n=2000, big_trials=1, speed_n=(1000, 2000), speed_reps=3)
INFO: dict = {}  # alibi/torch versions reported by the worker


def draw_null(data: dict, part: int, cell: int, trial: int, n: int):
    """((ref_emb, ref_prob), (test_emb, test_prob)): 2n clean images from pools A and B together, split at random."""
    rng = np.random.default_rng([part, cell, trial])
    idx = rng.choice(len(data["null_emb"]), 2 * n, replace=False)
    return tuple((data["null_emb"][i], data["null_prob"][i]) for i in (idx[:n], idx[n:]))


def draw(data: dict, part: int, cell: int, trial: int, n: int, shift: str | None = None, level: str | None = None):
    """((ref_emb, ref_prob), (test_emb, test_prob)): ref from pool A, test from pool B (shifted or resampled)."""
    rng = np.random.default_rng([part, cell, trial])
    ia = rng.choice(len(data["ref_emb"]), n, replace=False)
    key = "clean" if shift in (None, "label") else f"{shift}_{level}"
    if shift == "label":  # class-proportion shift: one class up-weighted, sampled without replacement
        y = data["clean_y"]
        w = np.where(y == rng.integers(10), LABEL_WEIGHT[level], 1.0)
        ib = rng.choice(len(y), n, replace=False, p=w / w.sum())
    else:
        ib = rng.choice(len(data["clean_emb"]), n, replace=False)
    return (data["ref_emb"][ia], data["ref_prob"][ia]), (data[f"{key}_emb"][ib], data[f"{key}_prob"][ib])


def run_ours(ref, test, seed: int) -> dict:
    """p-values of our four detectors on one pair."""
    (re, rp), (te, tp) = ref, test
    return {"mmd": MMDDrift(re, p_val=ALPHA, n_permutations=N_PERM, seed=seed).predict(te).p_val,
            "classifier": ClassifierDrift(re, p_val=ALPHA, seed=seed).predict(te).p_val,
            "ks": KSDrift(re, p_val=ALPHA, n_permutations=N_PERM, seed=seed).predict(te).p_val,
            "bbsd": LabelShiftDrift(rp, p_val=ALPHA, n_permutations=N_PERM, seed=seed).predict(tp).p_val}


def run_worker(arrays: dict, tmp: Path, seed: int, threads: int) -> list[dict]:
    """One alibi_worker.py call on ``x_ref_<i>``/``x_<i>`` arrays; its per-pair results."""
    npz, out, log = tmp / f"in{seed}.npz", tmp / f"out{seed}.json", tmp / f"log{seed}.txt"
    np.savez(npz, **arrays)
    cmd = [str(ALIBI_PY), str(WORKER), str(npz), str(out), "--n-permutations", str(N_PERM), "--seed", str(seed),
           "--threads", str(threads)]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    npz.unlink()
    if rc != 0:
        raise RuntimeError(f"alibi worker failed (rc {rc}):\n{log.read_text()[-3000:]}")
    res = json.loads(out.read_text())
    INFO.update({k: res[k] for k in ("alibi_detect_version", "torch_version", "numpy_version")})
    return res["results"]


def alibi_background(data: dict, jobs: list[tuple], part: int, tmp: Path, results: dict, errors: list,
                     threads: int = 1, max_bytes: float = 256e6) -> threading.Thread:
    """Run alibi on ``jobs`` = [(cell, trial, n, shift, level)] in batches of <= max_bytes, in a thread."""
    batches, cur, size = [], [], 0
    for job in jobs:
        if cur and size + 8 * job[2] * 512 > max_bytes:
            batches.append(cur)
            cur, size = [], 0
        cur.append(job)
        size += 8 * job[2] * 512
    batches += [cur] if cur else []

    def work():
        try:
            for b, batch in enumerate(batches):
                t0, arrays = time.perf_counter(), {}
                for i, (cell, trial, n, shift, level) in enumerate(batch):
                    (r, _), (t, _) = (draw_null(data, part, cell, trial, n) if part == 1
                                      else draw(data, part, cell, trial, n, shift, level))
                    arrays[f"x_ref_{i}"], arrays[f"x_{i}"] = r, t
                for (cell, trial, *_), res in zip(batch, run_worker(arrays, tmp, 1000 * part + b, threads)):
                    results[(cell, trial)] = res
                print(f"  [alibi] batch {b + 1}/{len(batches)}: {len(batch)} pairs at n={sorted({j[2] for j in batch})} "
                      f"in {time.perf_counter() - t0:.0f} s", flush=True)
        except Exception as e:  # reported by the main thread after join()
            errors.append(e)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    return th


def join(th: threading.Thread, errors: list) -> None:
    th.join()
    if errors:
        raise errors[0]


def rate(pvals: list[float]) -> dict:
    """Rejection rate at ALPHA with a 95% Clopper-Pearson interval."""
    k, n = int(sum(p < ALPHA for p in pvals)), len(pvals)
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return {"rate": k / n, "k": k, "trials": n, "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "p_vals": [round(float(p), 4) for p in pvals]}


def alibi_cost(results: dict) -> float:
    """Seconds per squared pooled sample size of alibi's fit + predict (for estimates)."""
    c = [(r["fit_s"] + r["predict_s"]) / (r["n_ref"] + r["n"]) ** 2 for r in results.values() if r["n"] >= 500]
    return float(np.median(c)) if c else 6.5 / 4000**2  # README: ~6.5 s at 2000 + 2000


def part_calibration(data: dict, cfg: dict, tmp: Path) -> tuple[dict, dict]:
    print("== 1. calibration (no shift) ==", flush=True)
    jobs = [(ci, t, n, None, None) for ci, n in enumerate(cfg["calib_n"]) if n in cfg["calib_alibi_n"]
            for t in range(cfg["calib_trials"])]
    ares, errors = {}, []
    th = alibi_background(data, jobs, 1, tmp, ares, errors)
    out = {d: {} for d in (*OURS, "alibi_mmd")}
    for ci, n in enumerate(cfg["calib_n"]):
        t0 = time.perf_counter()
        ps = [run_ours(*draw_null(data, 1, ci, t, n), seed=t) for t in range(cfg["calib_trials"])]
        for d in OURS:
            out[d][n] = rate([p[d] for p in ps])
        print(f"  n={n}: " + "  ".join(f"{d} {out[d][n]['rate']:.3f}" for d in OURS)
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    join(th, errors)
    for ci, n in enumerate(cfg["calib_n"]):
        if n in cfg["calib_alibi_n"]:
            out["alibi_mmd"][n] = rate([ares[(ci, t)]["p_val"] for t in range(cfg["calib_trials"])])
            print(f"  alibi n={n}: {out['alibi_mmd'][n]['rate']:.3f}", flush=True)
    return out, ares


def part_power(data: dict, cfg: dict, tmp: Path, cost: float) -> tuple[list[dict], float]:
    print("== 2. power ==", flush=True)
    cells = [(s, lv, n, cfg["power_trials"]) for s in ("gaussian_noise", "blur", "rotation", "contrast", "label")
             for lv in LEVELS for n in cfg["power_n"]]
    cells += [(s, "weak", cfg["big_n"], cfg["big_trials"]) for s in ("gaussian_noise", "blur", "rotation",
                                                                       "contrast", "label")]
    jobs = [(ci, t, n, s, lv) for ci, (s, lv, n, k) in enumerate(cells) for t in range(k)]
    est = sum(cost * (2 * j[2]) ** 2 for j in jobs)
    print(f"  {len(cells)} cells, {len(jobs)} pairs; alibi estimate {est / 60:.1f} min (1 thread, in background)",
          flush=True)
    ares, errors = {}, []
    th = alibi_background(data, sorted(jobs, key=lambda j: -j[2]), 2, tmp, ares, errors)
    rows = []
    for ci, (s, lv, n, k) in enumerate(cells):
        t0 = time.perf_counter()
        ps = [run_ours(*draw(data, 2, ci, t, n, s, lv), seed=t) for t in range(k)]
        rows.append({"shift": s, "level": lv, "n": n, "trials": k, **{d: rate([p[d] for p in ps]) for d in OURS}})
        print(f"  {s:14s} {lv:6s} n={n:5d}: " + "  ".join(f"{d} {rows[-1][d]['rate']:.2f}" for d in OURS)
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    join(th, errors)
    for ci, row in enumerate(rows):
        row["alibi_mmd"] = rate([ares[(ci, t)]["p_val"] for t in range(row["trials"])])
    spent = sum(r["fit_s"] + r["predict_s"] for r in ares.values())
    print(f"  alibi fit+predict total {spent / 60:.1f} min", flush=True)
    return rows, spent


def part_speed(data: dict, cfg: dict, tmp: Path, cost: float) -> list[dict]:
    print("== 3. speed (torch threads = 2) ==", flush=True)
    torch.set_num_threads(2)
    pairs = {n: draw(data, 3, i, 0, n) for i, n in enumerate(cfg["speed_n"])}
    MMDDrift(pairs[cfg["speed_n"][0]][0][0], seed=0).predict(pairs[cfg["speed_n"][0]][1][0])  # warm-up
    rows = []
    for n, ((re, _), (te, _)) in pairs.items():
        times, res = [], None
        for rep in range(cfg["speed_reps"]):
            t0 = time.perf_counter()
            res = MMDDrift(re, p_val=ALPHA, n_permutations=N_PERM, seed=rep).predict(te)
            times.append(time.perf_counter() - t0)
        rows.append({"n": n, "ours_s": float(np.median(times)), "ours_runs_s": times, "ours_p_val": res.p_val,
                     "ours_method": res.detail["method"], "load_avg": os.getloadavg()[0]})
        print(f"  ours n={n}: {rows[-1]['ours_s']:.3f} s ({res.detail['method']})", flush=True)
    print(f"  alibi estimate {sum(cost * (2 * n) ** 2 for n in pairs) / 60:.1f} min", flush=True)
    for row in rows:
        (re, _), (te, _) = pairs[row["n"]]
        r = run_worker({"x_ref_0": re, "x_0": te}, tmp, 3000 + row["n"], threads=2)[0]
        row.update(alibi_s=r["fit_s"] + r["predict_s"], alibi_fit_s=r["fit_s"], alibi_predict_s=r["predict_s"],
                   alibi_p_val=r["p_val"], load_avg_alibi=os.getloadavg()[0])
        row["ratio"] = row["alibi_s"] / row["ours_s"]
        print(f"  alibi n={row['n']}: {row['alibi_s']:.2f} s -> {row['ratio']:.0f}x", flush=True)
    return rows


def fmt(r: dict) -> str:
    return f"{r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"


def report(res: dict) -> str:
    cal, power, speed, s = res["calibration"], res["power"], res["speed"], res["summary"]
    ns = sorted({n for d in cal.values() for n in d})
    names = {"mmd": "ours MMDDrift", "classifier": "ours ClassifierDrift", "ks": "ours KSDrift (max-KS permutation)",
             "bbsd": "ours LabelShiftDrift (BBSD)", "alibi_mmd": "alibi-detect MMDDrift"}
    m = res["machine"]
    lines = [f"# Drift detectors vs alibi-detect {m.get('alibi_detect_version', '?')}", "",
             f"Fashion-MNIST resnet18 embeddings (512-d), alpha = {ALPHA}, {N_PERM} permutations. "
             f"{m['cpu_count']} CPUs, torch {m['torch']}, total runtime {res['runtime_s'] / 60:.1f} min"
             + (" (**--quick**)" if res["quick"] else "") + ".", "",
             f"## 1. Calibration (no shift): false-alarm rate [95% Clopper-Pearson], {res['config']['calib_trials']} "
             "trials per cell; target [0.02, 0.08]", "",
             "| detector | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    lines += [f"| {names[d]} | " + " | ".join(fmt(cal[d][n]) if n in cal[d] else "-" for n in ns) + " |" for d in cal]
    lines += ["", "## 2. Power: detection rate at alpha = 0.05 (same pairs for every detector)", "",
              f"n = {res['config']['big_n']}: {res['config']['big_trials']} trials, weak level only (alibi costs "
              "about a minute per pair). label = class-proportion shift (one class x2 / x4 / x8). Image-shift "
              "parameters (weak / medium / strong): " + "; ".join(f"{k} " + " / ".join(f"{v:g}" for v in lv.values())
                                                             for k, lv in res["embeddings_meta"].get("levels", {}).items())
              + ".", "",
              "| shift | level | n | trials | ours MMD | alibi MMD | classifier | KS | BBSD |", "|---" * 9 + "|"]
    lines += [f"| {r['shift']} | {r['level']} | {r['n']} | {r['trials']} | " + " | ".join(
        f"{r[d]['rate']:.2f}" for d in ("mmd", "alibi_mmd", "classifier", "ks", "bbsd")) + " |" for r in power]
    lines += ["", f"Our MMD rate >= alibi's in {s['power_ours_ge_alibi']} of {len(power)} cells. "
              + ("Lower: " + "; ".join(s["power_lower"]) + "." if s["power_lower"] else "No cell is lower.")
              + f" One trial is {1 / res['config']['power_trials']:.2f}; a McNemar p above 0.05 means the deficit is within chance. alibi fit+predict"
              f" time in this part: {res['power_alibi_s'] / 60:.1f} min.", "",
              "## 3. Speed: 512-d, 100 permutations (ours: median of 3, alibi: 1 run; torch threads = 2)", "",
              "| n per side | ours s | alibi s | alibi / ours | >= 100x | load avg |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['ours_s']:.3f} ({r['ours_method']}) | {r['alibi_s']:.2f} | {r['ratio']:.0f}x | "
              f"{'yes' if r['ratio'] >= 100 else 'no'} | {r['load_avg']:.1f} / {r['load_avg_alibi']:.1f} |"
              for r in speed]
    lines += ["", "## Targets not met", ""] + ([f"- {x}" for x in s["not_met"]] or ["- none"])
    return "\n".join(lines) + "\n"


def mcnemar_p(ours: list[float], alibi: list[float]) -> float:
    """One-sided exact McNemar p-value for 'alibi detects more often than ours' on paired trials."""
    from scipy.stats import binomtest

    only_alibi = sum(a < ALPHA <= o for o, a in zip(ours, alibi))
    only_ours = sum(o < ALPHA <= a for o, a in zip(ours, alibi))
    n = only_alibi + only_ours
    return 1.0 if n == 0 else float(binomtest(only_alibi, n, 0.5, alternative="greater").pvalue)


def summarise(res: dict) -> dict:
    not_met = [f"calibration {d} n={n}: {r['rate']:.3f}" for d, by_n in res["calibration"].items()
               for n, r in by_n.items() if not 0.02 <= r["rate"] <= 0.08]
    lower = [f"{r['shift']}/{r['level']}/n={r['n']}: ours {r['mmd']['rate']:.2f} vs alibi "
             f"{r['alibi_mmd']['rate']:.2f} ({r['mmd']['k'] - r['alibi_mmd']['k']:+d} of {r['trials']} trials, "
             f"McNemar p = {mcnemar_p(r['mmd']['p_vals'], r['alibi_mmd']['p_vals']):.2f})"
             for r in res["power"] if r["mmd"]["rate"] < r["alibi_mmd"]["rate"]]
    not_met += [f"power {x}" for x in lower]
    not_met += [f"speed n={r['n']}: ratio {r['ratio']:.0f}x < 100x" for r in res["speed"] if r["ratio"] < 100]
    big = max(res["speed"], key=lambda r: r["n"])
    if big["n"] >= 10000 and big["ours_s"] >= 2:
        not_met.append(f"speed n={big['n']}: ours {big['ours_s']:.2f} s >= 2 s")
    ge = sum(r["mmd"]["rate"] >= r["alibi_mmd"]["rate"] for r in res["power"])
    return {"power_ours_ge_alibi": ge, "power_lower": lower, "not_met": not_met}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (few trials and sizes)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "results")
    ap.add_argument("--emb", type=Path, default=DEFAULT_OUT, help="embeddings cache from embeddings.py")
    args = ap.parse_args(argv)
    if not args.emb.exists():
        raise SystemExit(f"{args.emb} is missing; run .venv/bin/python bench/drift/embeddings.py")
    if not ALIBI_PY.exists():
        raise SystemExit(f"{ALIBI_PY} is missing; run bash bench/drift/setup_alibi_env.sh")
    cfg, t_start = (QUICK if args.quick else FULL), time.perf_counter()
    arrays, meta = load_embeddings(args.emb)
    data = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    data["null_emb"], data["null_prob"] = (np.concatenate([data[f"ref_{k}"], data[f"clean_{k}"]]) for k in ("emb", "prob"))
    res = {"quick": args.quick, "config": cfg, "embeddings": str(args.emb), "embeddings_meta": meta}
    with tempfile.TemporaryDirectory(prefix="bench_drift_") as tmp:
        res["speed"] = part_speed(data, cfg, Path(tmp), alibi_cost({}))  # first, while the machine is quiet
        torch.set_num_threads(1)
        with threadpool_limits(1):  # ours on one core while alibi uses the other
            res["calibration"], ares = part_calibration(data, cfg, Path(tmp))
            res["power"], res["power_alibi_s"] = part_power(data, cfg, Path(tmp), alibi_cost(ares))
    import scipy, sklearn  # noqa: E401 - versions only
    res["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                      "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
                      "python": platform.python_version(), "platform": platform.platform(),
                      **{f"alibi_{k}" if k != "alibi_detect_version" else k: v for k, v in INFO.items()}}
    res["runtime_s"] = time.perf_counter() - t_start
    res["summary"] = summarise(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(res, indent=1, default=str))
    md = report(res)
    (args.out / "drift.md").write_text(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
