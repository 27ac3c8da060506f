"""The repository's own data.dvc pins the bundled sample dataset, reproducibly."""

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_root_data_dvc_is_the_regenerated_sample(tmp_path):
    from tasks.versioning import ensure_project, version_dataset
    from transferops.samples import write_handwritten_digits

    pinned = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    write_handwritten_digits(tmp_path / "sample")
    project = tmp_path / "proj"
    ensure_project(project, str(project / ".transferops" / "dvc-remote"))
    version = version_dataset.fn(project, tmp_path / "sample")
    assert (version.md5, version.nfiles) == (pinned["md5"], pinned["nfiles"]), (
        "the sample no longer regenerates byte for byte; if a dependency changed PNG encoding, "
        "rerun `transferops sample handwritten-digits data && dvc add data` and commit data.dvc")
    # the folder remote is stored relative to .dvc/, so the project can move
    assert "url = ../.transferops/dvc-remote" in (project / ".dvc" / "config").read_text()
