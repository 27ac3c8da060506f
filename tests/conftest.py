"""Shared fixtures: a network guard, tiny image datasets, a tiny source bundle, Prefect's harness."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from transferops.offline import apply_offline_defaults

apply_offline_defaults()
# Tests train on a few dozen images for an epoch or two: the minimum-steps rule, which gives
# real small datasets enough optimizer steps, would make every test run 300 steps. A test of
# the rule itself sets it (environment variables outrank the YAML files tests write).
os.environ.setdefault("TRANSFEROPS_TRAINING__MIN_STEPS", "0")
# Prefect sets up logging (binding sys.stderr) when prefect.main first loads, which
# `import prefect` alone does not do (lazy imports). Loading it here binds pytest's
# session-long capture, not a per-test capsys stream that is closed after its test.
from prefect import flow  # noqa: E402,F401
import dvc.repo  # noqa: E402,F401  (same for DVC's log handlers)


# --------------------------------------------------------------------------- network guard
def _loopback(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths (bytes) and the like
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkAttempt(RuntimeError):
    """A test tried to reach a host other than the loopback."""


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Fail any in-process connection to a non-loopback address: the project must work offline."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    attempts: list[str] = []

    def check(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(host):
            attempts.append(str(address))
            raise NetworkAttempt(f"connection to {address} attempted; only 127.0.0.1 is allowed")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    yield attempts
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex
    assert not attempts, f"non-loopback connections attempted: {attempts}"


# --------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """3 classes x 30 coloured shapes, 32x32."""
    from transferops.samples import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes") / "plain", per_class=30, classes=3, seed=0)


@pytest.fixture(scope="session")
def source_bundle(tmp_path_factory, shapes_dir) -> Path:
    """A resnet18 source bundle (random weights, 3 classes) with a profile of plain shapes."""
    from transferops.data import scan_dataset
    from transferops.loading import make_loader
    from transferops.models import build_model, save_bundle
    from transferops.training import extract_embeddings

    torch.manual_seed(0)
    model = build_model("resnet18", 3, weights=None).eval()
    transforms = {"crop_size": 32, "resize_size": 32, "mean": [0.3, 0.3, 0.3], "std": [0.3, 0.3, 0.3],
                  "interpolation": "bilinear"}
    path = tmp_path_factory.mktemp("bundle") / "source"
    bundle = save_bundle(model, path, backbone="resnet18", categories=["a", "b", "c"], transforms=transforms)
    images = scan_dataset(shapes_dir)
    loader = make_loader(images.records, images.class_to_idx, bundle.weights.transforms(), batch_size=32, shuffle=False)
    emb, _ = extract_embeddings(model, loader, torch.device("cpu"))
    np.savez_compressed(path / "profile.npz", embeddings=emb)
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness: a temporary database and ephemeral API for the session."""
    from prefect.testing.utilities import prefect_test_harness

    import logging

    with prefect_test_harness(server_startup_timeout=180):
        yield
        # pytest closes its capture streams before session teardown; the harness's
        # "Stopping temporary server" line would then print a logging traceback
        logging.getLogger("prefect").setLevel(logging.WARNING)


def _flat_batch(root: Path, name: str, seed: int, *styles: str, invert: bool = False) -> tuple[Path, list[dict]]:
    """An unlabelled production batch: 15 shapes per class of each style (colours inverted on
    request), every image in one flat folder; returns the folder and the images' path,label rows."""
    from PIL import Image, ImageOps

    from transferops.samples import write_shapes

    out = root / name
    out.mkdir()
    rows = []
    for style in styles:
        tree = write_shapes(root / f"{name}-{style}-tree", per_class=15, seed=seed, style=style)
        for f in sorted(tree.rglob("*.png")):
            dest = f"{style}-{f.parent.name}-{f.name}"
            img = Image.open(f).convert("RGB")
            (ImageOps.invert(img) if invert else img).save(out / dest)
            rows.append({"path": dest, "label": f.parent.name})
    return out, rows


@pytest.fixture(scope="session")
def flat_batch():
    """The production-batch writer the monitoring tests share."""
    return _flat_batch
