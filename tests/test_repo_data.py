"""The repository's own data.dvc pins the bundled sample dataset, reproducibly."""

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_root_data_dvc_is_the_regenerated_sample(tmp_path):
    from flows.data import DataParams, add_data_direct
    from transferops.samples import write_handwritten_digits

    pinned = yaml.safe_load((REPO / "data.dvc").read_text())
    write_handwritten_digits(tmp_path / "sample")
    project = tmp_path / "proj"
    version = add_data_direct(DataParams(source=str(tmp_path / "sample"), project_dir=str(project)))
    assert (version["md5"], version["meta"]["content_hash"]) == (pinned["outs"][0]["md5"], pinned["meta"]["content_hash"]), (
        "the sample no longer regenerates byte for byte; if a dependency changed PNG encoding, run "
        "`transferops sample handwritten-digits /tmp/s && transferops data add /tmp/s --replace` in the repo and commit data.dvc")
    # the folder remote is stored relative to .dvc/, so the project can move
    assert "url = ../.transferops/dvc-remote" in (project / ".dvc" / "config").read_text()


def test_cli_data_add_runs_without_importing_prefect(tmp_path):
    """The direct path skips Prefect's ~0.6 s import: `data add` of a small version costs seconds."""
    import subprocess
    import sys

    from transferops.samples import write_shapes

    src = write_shapes(tmp_path / "src", per_class=30)
    code = ("import sys; from transferops.cli import main; "
            f"rc = main(['data', 'add', {str(src)!r}, '--workdir', {str(tmp_path / 'proj')!r}, '--json']); "
            "assert rc in (0, None), rc; "
            "print('PREFECT_IMPORTED' if 'prefect' in sys.modules else 'NO_PREFECT')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("NO_PREFECT"), out.stdout[-500:]
