"""Data-parallel training of one phase under ``torchrun`` (DistributedDataParallel).

A flow run is one process on one worker; what it trains can use every GPU of that worker.
:func:`launch_phase` writes the phase (settings, model, data, source) to a file, starts
``torchrun --standalone --nproc-per-node N -m transferops.distributed`` and waits. Each rank
(:func:`main`) joins the process group (NCCL on CUDA, gloo on CPU), trains its shard through
the same :func:`transferops.engine._train_phase` a single process runs, and rank 0 alone
draws progress, writes the checkpoint and hands back the kept weights and the history.

Tracking and registration never run in the ranks: the calling process reads rank 0's
evaluation rows as they come (a JSON-lines file) and passes them to ``on_epoch``, so
MLflow sees one run, and the flow registers one model version, however many processes trained.
The checkpoint is the single-process one (plus every rank's random state), so a flow retry
resumes a phase killed mid-epoch, with any number of processes.

Within a node only: a flow's training spans one worker's GPUs. Several nodes for one model
need a launcher per node (``torchrun --nnodes``), which a Prefect process worker is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from torch import nn

    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.sources import SourceModel
    from transferops.training import FitResult


def backend_for(device: torch.device, choice: str = "auto") -> str:
    """The process-group backend: NCCL between GPUs, gloo on CPU (``training.dist_backend``)."""
    if choice != "auto":
        return choice
    return "nccl" if device.type == "cuda" else "gloo"


def torchrun_command(spec: Path, nproc: int) -> list[str]:
    """``torchrun`` as a module of this interpreter (the venv's), one node, ``nproc`` ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "transferops.distributed", str(spec)]


def launch_phase(settings: "Settings", model: "nn.Module", phase: Any, images: "ImageSet", src: "SourceModel",
                 checkpoint: Path, *, nproc: int, step_offset: int, on_epoch: Callable[[dict[str, Any]], None] | None,
                 progress: bool, label: str) -> "FitResult":
    """Train ``phase`` of ``model`` in ``nproc`` DDP processes; ``model`` ends with the kept weights.

    Raises ``RuntimeError`` when a rank fails (its traceback is on stderr, above torchrun's
    summary); the checkpoint written so far stays, so running again resumes.
    """
    with tempfile.TemporaryDirectory(prefix="transferops-ddp-") as tmp:
        work = Path(tmp)
        spec, events, out = work / "phase.pt", work / "events.jsonl", work / "result.pt"
        torch.save({"settings": settings, "model": model.cpu(), "phase": phase, "images": images, "src": src,
                    "checkpoint": str(checkpoint), "step_offset": step_offset, "progress": progress, "label": label,
                    "events": str(events), "out": str(out)}, spec)
        env = dict(os.environ)
        # torchrun would set 1 thread per rank; on CPU the ranks share the cores instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        # stdout=stderr: with --json, this process's stdout carries one JSON document
        proc = subprocess.Popen(torchrun_command(spec, nproc), stdout=_stderr_fd(), env=env)
        try:
            seen = 0
            while True:
                done = proc.poll() is not None
                seen = _replay(events, seen, on_epoch)
                if done:
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:  # interrupted here: torchrun passes SIGTERM on to the ranks
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"distributed training of {label}/{phase.name} in {nproc} processes failed "
                               f"(torchrun exit {proc.returncode}); the failing rank's error is above, on stderr. "
                               f"Rerun to resume from {checkpoint}, or set training.nproc_per_node: 1")
        result = torch.load(out, map_location="cpu", weights_only=False)
    from transferops.training import resolve_device

    model.load_state_dict(result["state"])
    model.to(resolve_device(settings.training.device))  # where a phase in this process leaves it
    return result["fit"]


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a test's or a logger's stand-in object: the process's own
        return 2


def _replay(events: Path, seen: int, on_epoch: Callable[[dict[str, Any]], None] | None) -> int:
    """Pass the evaluation rows rank 0 wrote since line ``seen`` to ``on_epoch``; the new count."""
    if not events.is_file():
        return seen
    lines = events.read_text().splitlines(keepends=True)
    complete = [ln for ln in lines if ln.endswith("\n")]  # a row being written has no newline yet
    for line in complete[seen:]:
        if on_epoch:
            on_epoch(json.loads(line))
    return len(complete)


def _run_rank(spec_path: Path) -> None:
    """One rank: join the group, train this rank's shard, and (rank 0) write the result."""
    import torch.distributed as dist

    from transferops.engine import _train_phase
    from transferops.training import resolve_device, seed_everything

    spec = torch.load(spec_path, map_location="cpu", weights_only=False)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    settings = spec["settings"]
    cfg = settings.training
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device, cfg.dist_backend))
    try:
        # the same weights everywhere (DDP also broadcasts rank 0's); augmentation differs per rank
        seed_everything(cfg.seed + rank)
        events = Path(spec["events"])

        def on_epoch(row: dict[str, Any]) -> None:
            with events.open("a") as f:  # one whole line per row: the launcher reads complete lines only
                f.write(json.dumps(row, default=float) + "\n")

        model = spec["model"]
        result = _train_phase(settings, model, spec["phase"], spec["images"], spec["src"], device, Path(spec["checkpoint"]),
                              step_offset=spec["step_offset"], on_epoch=on_epoch if rank == 0 else None,
                              progress=spec["progress"] and rank == 0, label=f"{spec['label']} x{world}",
                              shard=(rank, world))
        if rank == 0:
            torch.save({"state": {k: v.cpu() for k, v in model.state_dict().items()}, "fit": result}, spec["out"])
        dist.barrier()  # no rank leaves (and tears the group down) while rank 0 still writes
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point of each rank: ``python -m transferops.distributed PHASE_FILE`` (run by torchrun)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun ... -m transferops.distributed PHASE_FILE (written by launch_phase)", file=sys.stderr)
        return 2
    record(_run_rank)(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
