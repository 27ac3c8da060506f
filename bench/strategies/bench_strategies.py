"""Strategy benchmark: does transfer beat training from scratch, and does ``auto`` pick the right strategy?

Source: a resnet18 at 32 px developed from random init on Fashion-MNIST classes 0-4 (clean), through the
core API as ``transferops source`` does (scratch_source, train_model, export_bundle, open_source).
Targets: classes 5-9, scenarios = sizes (small: 20 train + 5 val per class; large: 1,000 + 200) x
domains (image shifts of ``fashion.py``: clean, invert, rotate, noise; blur on request), test = every
t10k image of the five classes. Per scenario: ``measure_drift`` once; every strategy of
``transferops.strategy.STRATEGIES`` trained and tested per seed (3 seeds small, 1 large; the seed is
``training.seed``: initialisation and shuffling, the images stay the same); then ``pick_strategy("auto")``
(and ``"search"`` when the core offers it): its pick, reason, the call's wall time, and its accuracy.

Auto's accuracy reuses the oracle's run of the picked strategy with the same seed when the two
choices agree on every training field: train_model is a deterministic function of (settings, source,
choice, data) on CPU, so training it again would repeat the same computation. Its compute is the
pick_strategy call plus that run's seconds; the oracle's is the sum over all strategies for the seed.

Resumable: every finished run is appended to ``<workdir>/runs.jsonl`` and skipped on a rerun with the
same key (scenario, strategy, seed, hash of settings + data + source + device + transferops commit).

    .venv/bin/python bench/strategies/bench_strategies.py [--quick] [--domains clean,invert,rotate,noise]
        [--seeds 3] [--workdir bench/strategies/work] [--out bench/results/strategies]
        [--dask [ADDRESS|local] [--dask-workers N]]

``--dask`` runs each scenario's named runs in parallel as Prefect task runs on a Dask cluster
(``tasks/runners.py``); the selections stay one at a time in this process, so their seconds
compare as before.

Writes ``<out>.json`` (every raw run, the derived table, the environment) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(HERE)]  # the repo root (transferops) and this folder
from transferops.offline import apply_offline_defaults  # noqa: E402

apply_offline_defaults()  # telemetry off, as the Makefile does, before any tool is imported

import fashion  # noqa: E402
import runs  # noqa: E402
from runs import log  # noqa: E402
from summary import markdown, summarise  # noqa: E402

SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
BACKBONE, IMAGE_SIZE = "resnet18", 32
# Every settings override, in one place; the rest are transferops' defaults (or the workdir's
# transferops.yaml / TRANSFEROPS_* variables), all recorded in the JSON.
OVERRIDES = {"training": {"batch_size": 64, "device": "auto"}}
FULL = {"sizes": {"small": (20, 5), "large": (1000, 200)}, "seeds": {"small": 3, "large": 1},
        "domains": ("clean", "invert", "rotate", "noise"), "test_cap": None, "source": (1000, 200),
        "source_epochs": None, "overrides": {}}
QUICK = {"sizes": {"small": (20, 5), "large": (100, 20)}, "seeds": {"small": 1, "large": 1},
         "domains": ("clean", "invert"), "test_cap": 100, "source": (100, 20), "source_epochs": 1,
         # 100 images per class count as "large" for auto only under a lower threshold; min_steps and
         # eval_every_steps exist only in the step-budget engine (skipped, with a note, elsewhere)
         "overrides": {"training": {"epochs": 2, "patience": 2, "min_steps": 20, "eval_every_steps": 10},
                       "strategy": {"small_max_per_class": 50}}}


@cache
def fmnist(split: str) -> tuple[Any, Any]:
    """Fashion-MNIST's train or test set, loaded once and only when a tree must be written."""
    return fashion.load_split(split)


def tree_name(role: str, spec: fashion.TreeSpec) -> str:
    """A readable folder name; ``tree.json`` inside guards against a different spec under the same name."""
    return f"{role}-{spec.shift}-{spec.n_train}+{spec.n_val}-test{spec.n_test or 'all'}-seed{spec.seed}"


def make_tree(work: Path, role: str, spec: fashion.TreeSpec) -> Path:
    """The tree of ``spec`` under ``<work>/data``, written on first use."""
    return fashion.write_tree(work / "data" / tree_name(role, spec), spec, lambda: fmnist("train"),
                              lambda: fmnist("test"))


def run_scenario(sc: dict[str, Any], s0: Any, src: Any, store: runs.RunStore, ctx: dict[str, Any]) -> tuple[str, str]:
    """Drift, every strategy per seed, then each selection mode per seed, skipping finished records;
    returns the scenario's config hashes (training records, selection records)."""
    from transferops.assessment import measure_drift, pick_strategy
    from transferops.data import scan_dataset
    from transferops.strategy import STRATEGIES

    spec = fashion.TreeSpec(TARGET_CLASSES, sc["n_train"], sc["n_val"], ctx["test_cap"], sc["domain"])
    tree = make_tree(ctx["work"], "target", spec)
    # named runs and drift: keyed on what trains them (--train-commit may pin an earlier commit);
    # selections: on everything, the auto rule included
    common = {"tree": spec.as_dict(), "source": ctx["source_key"], "device": ctx["device"]}
    config = runs.digest(common | {"settings": runs.fingerprint(s0, drop_rule=True), "commit": ctx["train_commit"]})
    sel_config = runs.digest(common | {"settings": runs.fingerprint(s0), "commit": ctx["git"]["commit"]})
    images = scan_dataset(tree, s0.data.val_fraction, s0.data.test_fraction)
    name, base, folder = sc["name"], {"scenario": sc["name"], "config": config}, ctx["work"] / "tmp" / "run"
    box: list[Any] = []

    def drift() -> Any:  # only when something is left to run: a finished scenario needs none
        if not box:
            t0 = time.perf_counter()
            box.append(measure_drift(runs.cold(s0, folder), src, images))
            secs, d = time.perf_counter() - t0, box[0]
            if store.get("drift", name, "drift", 0, config) is None:
                res = d.result
                store.add(base | {"kind": "drift", "name": "drift", "seed": 0, "similarity": d.similarity,
                                  "is_drift": res.is_drift if res else None, "reason": d.reason, "seconds": secs,
                                  "tests": d.report.rows() if d.report else []})
            log(f"{name}: {d.reason} ({secs:.1f} s)")
        return box[0]

    todo = [(strat, seed) for seed in sc["seeds"] for strat in STRATEGIES
            if not store.get("run", name, strat, seed, config)]
    if todo:
        trial, map_trials = runs.NamedTrial(s0, src, images, drift(), ctx["work"] / "tmp", name), ctx.get("map_trials")

        def one_by_one() -> Any:  # each run stored as soon as it ends: an interruption loses only that one
            for item in todo:
                log(f"{name}: {item[0]} seed {item[1]} ...")
                yield item, trial(item)

        if map_trials:
            log(f"{name}: {len(todo)} named runs on the Dask cluster ...")
        for (strat, seed), res in (zip(todo, map_trials(trial, todo), strict=True) if map_trials else one_by_one()):
            store.add(base | {"kind": "run", "name": strat, "seed": seed} | res)
            log(f"{name}: {strat} seed {seed}: accuracy {res['accuracy']:.4f}, {res['epochs']} epochs"
                f"{'' if res['steps'] is None else ', ' + str(res['steps']) + ' steps'}, {res['seconds']:.1f} s")
    for mode in ctx["modes"]:
        for seed in sc["seeds"]:
            if store.get("select", name, mode, seed, sel_config):
                continue
            d, s = drift(), runs.with_seed(s0, seed)
            s_cold = runs.cold(s, folder)  # the selection's probes start without cached features too
            t0 = time.perf_counter()
            choice = pick_strategy(s_cold, mode, src, images, d)
            sel_s = time.perf_counter() - t0
            shutil.rmtree(folder, ignore_errors=True)  # a search leaves checkpoints and features (GBs)
            cd = runs.choice_dict(choice)
            oracle = store.get("run", name, choice.name, seed, config)
            differs = runs.same_training(cd, oracle["choice"]) if oracle else ["no oracle run of this strategy"]
            res = oracle if not differs else runs.train_and_test(s, src, choice, images, folder)
            store.add(base | {"config": sel_config, "kind": "select", "name": mode, "seed": seed, "pick": choice.name,
                              "reason": choice.reason, "choice": cd, "selection_seconds": sel_s,
                              "selection_seconds_attr": getattr(choice, "selection_seconds", None),
                              "reused": not differs, "differs_in": differs, "accuracy": res["accuracy"],
                              # the pick's own measuring (e.g. partial_finetune's k) is in sel_s already
                              "pick_seconds": res["train_seconds"] + res["eval_seconds"],
                              "pick_run": None if not differs else res})
            log(f"{name}: {mode} seed {seed} picks {choice.name} in {sel_s:.2f} s "
                f"({'oracle run reused' if not differs else 'trained: differs in ' + ', '.join(differs)}): "
                f"accuracy {res['accuracy']:.4f}")
    return config, sel_config


def environment(s: Any, threads: int, git: dict[str, Any], load_start: tuple[float, ...]) -> dict[str, Any]:
    """Versions, machine and load: timings mean little without them."""
    import torch
    import torchvision

    from transferops.training import resolve_device

    dev = resolve_device(s.training.device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [ln.split(":", 1)[1].strip() for ln in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
                  if ln.startswith("model name")]
        name = models[0] if models else platform.processor()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": threads, "device": dev.type, "device_name": name,
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "transferops_commit": git["commit"], "transferops_dirty": git["dirty"],
            "train_commit": git.get("train_commit", git["commit"]),
            "changed_since_train_commit": git.get("changed_since_train_commit", [])}


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke configuration: tiny scenarios, a few minutes")
    p.add_argument("--domains", default=None, help=f"comma list of {', '.join(fashion.SHIFTS)} "
                                                   "(default: clean,invert,rotate,noise; quick: clean,invert)")
    p.add_argument("--sizes", default=None, help="comma list of size names (default: small,large)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per small scenario (default 3; quick 1)")
    p.add_argument("--large-seeds", type=int, default=None, help="seeds per large scenario (default 1)")
    p.add_argument("--source-train", type=int, default=None, help="source train images per class (default 1000)")
    p.add_argument("--source-val", type=int, default=None, help="source val images per class (default 200)")
    p.add_argument("--source-epochs", type=int, default=None, help="source epochs (default: training.epochs)")
    p.add_argument("--epochs", type=int, default=None, help="training.epochs of the target runs")
    p.add_argument("--test-cap", type=int, default=None, help="test images per class (default: all 1,000)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: CPU count)")
    p.add_argument("--workdir", type=Path, default=HERE / "work", help="trees, source bundle, runs.jsonl")
    p.add_argument("--out", type=Path, default=None,
                   help="output prefix (default bench/results/strategies; quick: <workdir>/quick/strategies)")
    p.add_argument("--modes", default=None, help="selection modes to measure (default: auto, and search "
                                                 "when the core has it; search costs about as much as the oracle)")
    p.add_argument("--no-resume", action="store_true", help="ignore finished runs in <workdir>/runs.jsonl")
    p.add_argument("--dask", nargs="?", const="local", default=None, metavar="ADDRESS|local",
                   help="run each scenario's named runs in parallel, as Prefect task runs on a Dask cluster: the "
                        "scheduler at ADDRESS (its workers must see this repository and --workdir at the same paths), "
                        "or a LocalCluster started here ('local', the default); selections stay one at a time here")
    p.add_argument("--dask-workers", type=int, default=None,
                   help="worker processes of the LocalCluster (default: one per CPU core)")
    p.add_argument("--train-commit", default=None,
                   help="key the source and the named runs on this earlier commit, to re-measure only the "
                        "selections after a change to the auto rule alone (default: HEAD; the files under "
                        "transferops/ changed since are logged and kept in the JSON)")
    return p.parse_args()


def dask_execution(dask: str | None, workers: int | None) -> Any:
    """The ``execution`` settings of ``--dask ADDRESS|local`` (None: without ``--dask``, one run at a time)."""
    from transferops.config import ExecutionConfig

    if dask is None:
        return None
    return ExecutionConfig(task_runner="dask", dask_address=None if dask == "local" else dask, dask_workers=workers)


@contextmanager
def parallel_runs(execution: Any) -> Iterator[Any]:
    """A ``TrialMap`` on the Dask cluster of ``execution`` for the block, or None (one at a time)."""
    if execution is None:
        yield None
        return
    from tasks.runners import trial_map

    with trial_map(execution) as map_trials:
        yield map_trials


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()
    import torch

    from transferops.config import load_settings
    from transferops.strategy import CHOICES, STRATEGIES
    from transferops.training import resolve_device

    cfg = dict(QUICK if args.quick else FULL)
    domains = tuple(args.domains.split(",")) if args.domains else cfg["domains"]
    sizes = {k: cfg["sizes"][k] for k in (args.sizes.split(",") if args.sizes else cfg["sizes"])}
    seeds = {"small": args.seeds or cfg["seeds"]["small"], "large": args.large_seeds or cfg["seeds"]["large"]}
    bad = [d for d in domains if d not in fashion.SHIFTS]
    if bad:
        raise SystemExit(f"unknown domain(s) {', '.join(bad)}; choose from {', '.join(fashion.SHIFTS)}")
    torch.set_num_threads(args.threads)
    work = args.workdir.resolve()
    out = args.out or (work / "quick" / "strategies" if args.quick else REPO / "bench" / "results" / "strategies")
    (work / "tmp").mkdir(parents=True, exist_ok=True)

    s0 = runs.with_overrides(load_settings(work), OVERRIDES, cfg["overrides"],
                        {"training": {"epochs": args.epochs}} if args.epochs else {})
    execution = dask_execution(args.dask, args.dask_workers)
    git = runs.git_state()
    train_commit = git["commit"]
    if args.train_commit:
        git["changed_since_train_commit"] = runs.changed_since(args.train_commit)
        train_commit = git["train_commit"] = runs.git_state_of(args.train_commit)
        log(f"named runs keyed on {train_commit[:10]}; transferops/ files changed since: "
            f"{', '.join(git['changed_since_train_commit']) or 'none'}")
    n_train, n_val = args.source_train or cfg["source"][0], args.source_val or cfg["source"][1]
    test_cap = args.test_cap or cfg["test_cap"]
    src_epochs = args.source_epochs or cfg["source_epochs"]
    s_src = runs.with_overrides(s0, {"training": {"seed": 0} | ({"epochs": src_epochs} if src_epochs else {})})
    modes = tuple(args.modes.split(",")) if args.modes else ("auto", *(["search"] if "search" in CHOICES else []))
    if unknown := [m for m in modes if m not in CHOICES or m in STRATEGIES]:
        raise SystemExit(f"unknown selection mode(s) {', '.join(unknown)}; this core has "
                         f"{', '.join(c for c in CHOICES if c not in STRATEGIES)}")
    log(f"strategies {', '.join(STRATEGIES)}; selection {', '.join(modes)}; {args.threads} torch threads; "
        f"commit {git['commit'][:10]}{' (transferops/ has uncommitted changes)' if git['dirty'] else ''}")
    try:
        src_spec = fashion.TreeSpec(SOURCE_CLASSES, n_train, n_val, test_cap, "clean")
        src_tree = make_tree(work, "source", src_spec)
        source_key = runs.digest({"tree": src_spec.as_dict(), "backbone": BACKBONE, "image_size": IMAGE_SIZE,
                                  "settings": runs.fingerprint(s_src, drop_seed=False, drop_rule=True),
                                  "commit": train_commit})
        src, source_info = runs.ensure_source(s_src, src_tree, work / "source" / source_key, BACKBONE, IMAGE_SIZE)
        ctx = {"work": work, "test_cap": test_cap, "source_key": source_key, "git": git, "modes": modes,
               "train_commit": train_commit,
               "device": resolve_device(s0.training.device).type}
        store = runs.RunStore(work / "runs.jsonl", resume=not args.no_resume)
        scenarios = [{"name": f"{size}-{dom}", "size": size, "domain": dom, "n_train": nt, "n_val": nv,
                      "seeds": list(range(seeds["large" if size == "large" else "small"]))}
                     for size, (nt, nv) in sizes.items() for dom in domains]
        with parallel_runs(execution) as map_trials:
            ctx["map_trials"] = map_trials
            # the config each scenario's records carry: only those belong to this plan and code
            configs = {sc["name"]: run_scenario(sc, s0, src, store, ctx) for sc in scenarios}
    except fashion.MissingData as e:
        raise SystemExit(str(e)) from None

    rows = [r for r in store.rows.values() if r["config"] in configs.get(r["scenario"], ())]
    summary = summarise(rows, scenarios, STRATEGIES, modes)
    shutil.rmtree(work / "tmp", ignore_errors=True)
    env = environment(s0, args.threads, git, load_start)
    plan = {"quick": args.quick, "scenarios": scenarios, "strategies": list(STRATEGIES), "modes": list(modes),
            "test_cap_per_class": test_cap, "source_per_class": [n_train, n_val], "source_epochs": src_epochs,
            "overrides": [OVERRIDES, cfg["overrides"]], "settings": s0.model_dump(mode="json"),
            "parallel": execution.model_dump() if execution else None}
    write_outputs(out, env, source_info, plan, rows, summary)


def write_outputs(out: Path, env: dict[str, Any], source: dict[str, Any], plan: dict[str, Any],
                  rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """``<out>.json`` and ``<out>.md``; the table also goes to stdout."""
    strategies, modes = tuple(plan["strategies"]), tuple(plan["modes"])
    n_train, n_val = plan["source_per_class"]
    # compute actually spent on this table's records (cached ones included, at their own timing)
    run_s = sum(r.get("seconds", 0.0) for r in rows if r["kind"] in ("run", "drift"))
    run_s += sum(r["selection_seconds"] + (0.0 if r["reused"] else r["pick_seconds"])
                 for r in rows if r["kind"] == "select")
    header = [f"# Reuse strategies on Fashion-MNIST{' (quick smoke configuration)' if plan['quick'] else ''}", "",
              (f"Source: {BACKBONE} at {IMAGE_SIZE} px from random init on classes 0-4 ({n_train} train + {n_val} val "
              f"per class, {source['epochs']} epochs): test accuracy {100 * source['test_accuracy']:.1f} % "
              f"on {source['test_images']} images. Targets: classes 5-9 under each domain shift, "
              f"{plan['test_cap_per_class'] or 'all 1,000'} test images per class. "
              f"{env['cpu_count']} CPUs, {env['device']}, torch {env['torch']}, commit {env['transferops_commit'][:10]}"
              f"{'' if env['train_commit'] == env['transferops_commit'] else ' (source and named runs: ' + env['train_commit'][:10] + ')'}"
              f"{' + uncommitted changes' if env['transferops_dirty'] else ''}; drift + training + test of all "
              f"records {run_s / 60:.1f} min.")]
    if par := plan.get("parallel"):
        where = par["dask_address"] or f"a LocalCluster of {par['dask_workers'] or env['cpu_count']} processes"
        header += ["", f"Named runs ran side by side as Prefect task runs on Dask ({where}), with the CPU's threads "
                       "shared among them: their seconds are each run's own while sharing the machine."]
    footer = [("Cells: test accuracy in % (mean ± std over seeds; best in bold) and seconds of pick_strategy + "
               "training + test evaluation (mean over seeds). similarity: measure_drift's similarity to the source "
               "domain ('drift': its decision test flagged drift). pick: what pick_strategy chose (t: the linear-probe "
               "transferability in its evidence, where the core measures one). gap: best mean minus the pick's mean, "
               "in points. compute / oracle: (pick_strategy call + training and test of the pick) / (the same for "
               "every strategy), mean per seed; 'with drift' adds the drift measurement. transfer − scratch: best "
               "pretrained strategy's mean minus scratch's, in points.")]
    md = markdown(summary, strategies, modes, header, footer)
    doc = {"environment": env, "plan": plan, "source": source, "summary": summary, "runs": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.json").write_text(json.dumps(doc, indent=1, default=str))
    (out.parent / f"{out.name}.md").write_text(md)
    log(f"wrote {out.parent / out.name}.json and .md")
    print(md)


if __name__ == "__main__":
    main()
