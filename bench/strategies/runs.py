"""The benchmark's building blocks: settings overrides, fingerprints, the resumable run log, the
source model and one timed training + test run, all through transferops' core API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.sources import SourceModel

REPO = Path(__file__).resolve().parent.parent.parent
# Fields of a StrategyChoice that explain it but do not change training: two choices that agree on
# everything else train the same model (used to reuse an oracle run for auto's pick).
DESCRIPTIVE = frozenset({"reason", "size", "similarity", "selection_seconds", "evidence", "leaderboard"})

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def with_overrides(s: Settings, *overrides: dict[str, dict[str, Any]]) -> Settings:
    """``s`` with ``{section: {field: value}}`` overrides applied, later ones winning.

    A field this version of the core does not have is skipped with a note on stderr: the quick
    configuration names knobs of both the old and the new training engine.
    """
    for over in overrides:
        for section, fields in over.items():
            sec = getattr(s, section)
            known = {k: v for k, v in fields.items() if k in type(sec).model_fields}
            for k in fields.keys() - known.keys():
                log(f"note: settings have no {section}.{k}; override skipped")
            s = s.model_copy(update={section: sec.model_copy(update=known)})
    return s


def cold(s: Settings, folder: Path) -> Settings:
    """``s`` with an empty project folder of its own: no feature cache or checkpoint of another run
    can shorten (or resume) this one, so its wall time is a whole run's."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return s.model_copy(update={"project_dir": folder.resolve()})


def with_seed(s: Settings, seed: int) -> Settings:
    """``s`` with ``training.seed`` set: the seed of initialisation and shuffling."""
    return with_overrides(s, {"training": {"seed": seed}})


# The auto rule's settings: they change what auto picks, never how a named strategy trains.
RULE_FIELDS = ("small_max_per_class", "transferable_min", "small_fit", "small_misfit", "large_fit",
               "large_misfit", "budget")


def fingerprint(s: Settings, drop_seed: bool = True, drop_rule: bool = False) -> dict[str, Any]:
    """The settings that can change a result (data, training, strategy, drift), without paths;
    ``drop_rule`` leaves out the auto rule's settings (for records of named runs)."""
    d = s.model_dump(mode="json")
    out = {k: d[k] for k in ("data", "training", "strategy", "drift")}
    if drop_seed:  # the seed is part of a run's key on its own
        out["training"] = {k: v for k, v in out["training"].items() if k != "seed"}
    if drop_rule:
        out["strategy"] = {k: v for k, v in out["strategy"].items() if k not in RULE_FIELDS}
    return out


def git_state() -> dict[str, Any]:
    """The transferops commit and whether transferops/ has uncommitted changes (results may then
    come from code that no commit holds)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], check=False, capture_output=True,
                                  text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--verify", "-q", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--", "transferops"))}


def git_state_of(rev: str) -> str:
    """The full hash of ``rev``."""
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", f"{rev}^{{commit}}"], capture_output=True,
                          text=True, check=True).stdout.strip()


def changed_since(commit: str) -> list[str]:
    """Files under transferops/ that differ between ``commit`` and the work tree; raises
    SystemExit when git does not know the commit."""
    res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "-q", f"{commit}^{{commit}}"],
                         capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"--train-commit {commit}: git does not know this commit; give one from `git log`")
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "--name-only", commit, "--", "transferops"],
                          capture_output=True, text=True, check=True)
    return diff.stdout.split()


def choice_dict(choice: Any) -> dict[str, Any]:
    """A StrategyChoice as a plain dict (whatever fields the core gives it)."""
    if hasattr(choice, "as_dict"):
        return dict(choice.as_dict())
    return asdict(choice) if is_dataclass(choice) else dict(vars(choice))


def same_training(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields in which two choices' training differs (empty: the same training)."""
    keys = (a.keys() | b.keys()) - DESCRIPTIVE
    return sorted(k for k in keys if a.get(k, "<missing>") != b.get(k, "<missing>"))


class RunStore:
    """Finished records, one JSON object per line; a rerun skips what is already there.

    A record's key is (kind, scenario, name, seed, config): config hashes the settings, data,
    source model and transferops commit, so any change there runs things again (training
    records may name an earlier commit: ``--train-commit``). A line cut
    short by an interruption is ignored.
    """

    def __init__(self, path: Path, resume: bool = True) -> None:
        self.path = path
        self.rows: dict[tuple, dict[str, Any]] = {}
        if resume and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[self.key(row)] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(row: dict[str, Any]) -> tuple:
        return row["kind"], row["scenario"], row["name"], row["seed"], row["config"]

    def get(self, kind: str, scenario: str, name: str, seed: int, config: str) -> dict[str, Any] | None:
        return self.rows.get((kind, scenario, name, seed, config))

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Keep ``row`` and append it to the file at once (flushed: a crash loses at most this run)."""
        self.rows[self.key(row)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return row


def train_and_test(s: Settings, src: SourceModel, choice: Any, images: ImageSet, folder: Path) -> dict[str, Any]:
    """Train ``choice`` and evaluate it on the test split, in the cold project ``folder`` (removed
    afterwards); accuracy, seconds, epochs and steps run."""
    from transferops.engine import evaluate_on_test, train_model

    s = cold(s, folder)
    t0 = time.perf_counter()
    trained = train_model(s, src, choice, images, folder / "run.ckpt", progress=False)
    t1 = time.perf_counter()
    metrics = evaluate_on_test(s, trained.model, src.weights, images)
    t2 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    fit, hist = trained.fit, list(trained.fit.history)
    last = hist[-1] if hist else {}
    return {"accuracy": float(metrics["accuracy"]), "macro_f1": float(metrics.get("macro_f1", float("nan"))),
            "test_images": int(metrics.get("images", 0)), "train_seconds": t1 - t0, "eval_seconds": t2 - t1,
            "seconds": t2 - t0, "history_rows": len(hist),
            # the old engine logs a row per epoch; the new one per evaluation, with the step count
            "epochs": (last["epoch"] + 1) if "epoch" in last else len(hist),
            "steps": getattr(fit, "steps", None) or last.get("step"),
            "best_epoch": fit.best_epoch, "best_val_accuracy": fit.best_accuracy, "stopped_early": fit.stopped_early,
            "params": dict(trained.params), "choice": choice_dict(choice),
            "pretrained": bool(getattr(choice, "pretrained", choice.name != "scratch"))}


def named_run(s: Settings, src: SourceModel, name: str, images: ImageSet, drift: Any,
              folder: Path) -> dict[str, Any]:
    """One strategy by name as a user runs it: pick_strategy (which may measure, e.g. the frozen
    blocks of partial_finetune) then train and test; its seconds include the pick."""
    from transferops.assessment import pick_strategy

    t0 = time.perf_counter()
    choice = pick_strategy(cold(s, folder), name, src, images, drift)
    choice_s = time.perf_counter() - t0
    res = train_and_test(s, src, choice, images, folder)
    return res | {"choice_seconds": choice_s, "seconds": res["seconds"] + choice_s}


@dataclass
class NamedTrial:
    """The named runs of one scenario as a picklable function of ``(strategy, seed)``, for a
    ``TrialMap`` (``tasks/runners.py``) that may run them in other processes at once.

    Each run gets a cold project folder of its own under ``tmp``: runs side by side must not
    clear or resume each other's checkpoints and caches.
    """

    settings: Settings
    src: SourceModel
    images: ImageSet
    drift: Any
    tmp: Path
    scenario: str

    def __call__(self, item: tuple[str, int]) -> dict[str, Any]:
        strategy, seed = item
        return named_run(with_seed(self.settings, seed), self.src, strategy, self.images, self.drift,
                         self.tmp / f"{self.scenario}-{strategy}-seed{seed}")

    def label(self, item: tuple[str, int]) -> str:
        return f"{self.scenario} {item[0]} seed {item[1]}"


def ensure_source(s: Settings, tree: Path, folder: Path, backbone: str, image_size: int,
                  log_fn: Callable[[str], None] = log) -> tuple[SourceModel, dict[str, Any]]:
    """Develop the source model on ``tree`` the way ``transferops source`` does, or reuse it.

    ``folder`` is keyed by everything the model depends on; ``source.json`` is written last, so
    only a finished source is reused (an interrupted training resumes from its checkpoint).
    """
    from transferops.assessment import DriftOutcome, pick_strategy
    from transferops.data import scan_dataset
    from transferops.engine import evaluate_on_test, export_bundle, train_model
    from transferops.sources import open_source, parse_source, scratch_source

    info_file, bundle_dir = folder / "source.json", folder / "bundle"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        log_fn(f"source: reusing {bundle_dir} (test accuracy {info['test_accuracy']:.4f})")
        return open_source(parse_source(str(bundle_dir))), info
    log_fn(f"source: training {backbone} at {image_size} px from random init on {tree.name} ...")
    images = scan_dataset(tree, s.data.val_fraction, s.data.test_fraction)
    src = scratch_source(images, backbone, image_size)
    choice = pick_strategy(s, "scratch", src, images, DriftOutcome(None, "source model"))
    folder.mkdir(parents=True, exist_ok=True)
    s = s.model_copy(update={"project_dir": folder.resolve()})
    t0 = time.perf_counter()
    # an interrupted source training resumes from its checkpoint(s) in ckpt/
    trained = train_model(s, src, choice, images, folder / "ckpt" / "source.ckpt", progress=False)
    train_s = time.perf_counter() - t0
    metrics = evaluate_on_test(s, trained.model, src.weights, images)
    export_bundle(s, trained.model, src, images, bundle_dir, {"role": "source"})
    hist = list(trained.fit.history)
    info = {"test_accuracy": float(metrics["accuracy"]), "test_images": int(metrics["images"]),
            "classes": images.classes, "counts": images.counts(),
            "epochs": (hist[-1]["epoch"] + 1) if hist and "epoch" in hist[-1] else len(hist),
            "steps": getattr(trained.fit, "steps", None), "best_epoch": trained.fit.best_epoch,
            "train_seconds": train_s, "resumed_from": trained.fit.resumed_from, "backbone": backbone,
            "image_size": image_size, "history": hist}
    info_file.write_text(json.dumps(info, indent=1, default=str))
    shutil.rmtree(folder / "ckpt", ignore_errors=True)
    shutil.rmtree(folder / ".transferops", ignore_errors=True)
    log_fn(f"source: test accuracy {info['test_accuracy']:.4f} after {info['epochs']} epochs ({train_s:.0f} s)")
    return open_source(parse_source(str(bundle_dir))), info
