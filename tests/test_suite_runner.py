"""The GX suite in its helper process gives the same report as in-process."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys
    import pandas as pd
    from tasks import expectations
    from tasks.validation import Rules, SuiteRunner, run_suite

    def table(bad):
        rows = [dict(path=f"{c}/{i}.png", label=c, split="train", decodes=not (bad and i == 0), error="",
                     width=32, height=32, mode="RGB", bytes=100, sha256=f"{c}{i}", duplicate_across_splits=False)
                for c in ("a", "b") for i in range(6)]
        return pd.DataFrame(rows)

    if __name__ == "__main__":
        rules = Rules(["a", "b"], 5, ["RGB"], 8, 4096, 3.0)
        results, helpers = [], []
        for bad in (False, True):
            # the second runner is not asked for a helper (few images) but uses the one that is up
            with SuiteRunner(enabled=not bad) as suite:
                assert suite.enabled and "great_expectations" not in sys.modules
                results.append(suite.run(table(bad), rules))
                helpers.append(expectations._helper)
        # the suite ran in one helper, which imported GX once; this process never did
        assert helpers[0] is not None and helpers[0] is helpers[1]
        assert "great_expectations" not in sys.modules
        good, bad = results
        print(good.success, bad.success, [r["examples"] for r in bad.failures()])
        local = run_suite(table(True), rules)
        assert [r["success"] for r in local.results] == [r["success"] for r in bad.results]
""")


@pytest.mark.integration
def test_suite_runs_in_helper_process(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("True False [['a/0.png', 'b/0.png']]"), out.stdout


def _table():  # a pandas DataFrame; pandas is imported inside, as the other helpers here do
    import pandas as pd

    rows = [dict(path=f"{c}/{i}.png", label=c, split="train", decodes=True, error="", width=32, height=32,
                 mode="RGB", bytes=100, sha256=f"{c}{i}", duplicate_across_splits=False)
            for c in ("a", "b") for i in range(6)]
    # undecodable: no size or mode, which the decoded-only expectations must skip
    rows[0].update(decodes=False, error="empty file", width=0, height=0, mode="", sha256="")
    # one val image: per-class counts are expected of the train split only
    rows.append(dict(rows[1], path="a/val.png", split="val", sha256="aval"))
    return pd.DataFrame(rows)


@pytest.mark.integration
def test_suite_uses_no_deprecated_gx_api_and_its_conditions_hold():
    """Row conditions are GX condition objects: string conditions warn in GX 1.9+ and go in 2.0."""
    import warnings

    import great_expectations  # noqa: F401  (imported first: only the suite's own calls are judged)

    from tasks.expectations import Rules, run_suite

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        report = run_suite(_table(), Rules(["a", "b"], 5, ["RGB"], 8, 4096, 3.0))
    # only the undecodable file fails: mode/width/height skip it, and the val split is not counted
    assert [(r["expectation"], r["column"], r["examples"]) for r in report.failures()] == [
        ("expect_column_values_to_be_in_set", "decodes", ["a/0.png [empty file]"])]
