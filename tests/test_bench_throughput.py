"""The throughput benchmark runs end to end at toy scale (no timing is judged here: speed
targets live in bench/, whose figures the README records)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_throughput_bench_writes_its_table_and_json(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "throughput" / "bench_throughput.py"), "--side", "16",
                          "--batch", "4", "--steps", "1", "--warmup", "1", "--repeats", "1", "--real-images", "20",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "throughput.json").read_text())
    cells = {(r["task"], r["input"]) for r in doc["rows"]}
    assert cells == {("train", "synthetic"), ("train", "real"), ("extract", "synthetic"), ("extract", "real")}
    for r in doc["rows"]:
        if "note" in r:  # no Debian Fashion-MNIST here: the real-data cells say why
            assert r["input"] == "real" and "dataset-fashion-mnist" in r["note"]
            continue
        assert r["plain_images_per_s"] > 0 and r["engine_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["engine_images_per_s"] / r["plain_images_per_s"], abs=0.01)
    table = (tmp_path / "throughput.md").read_text()
    assert "| resnet18 | train | synthetic |" in table and "CPU" in doc["meta"]["device"]
