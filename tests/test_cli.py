"""The command line: what each command prints and returns, global options, exit codes, errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferops import __version__
from transferops.cli import cli, main
from transferops.errors import EXIT_DRIFT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EXIT_VALIDATION

COMMANDS = ["init", "demo", "source", "train", "profile", "drift", "status", "sample", "monitor", "retrain", "deploy",
            "serve"]
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("command", [[c] for c in COMMANDS] + [["data", "add"], ["data", "list"], ["data", "checkout"]])
def test_every_command_has_help_with_the_global_options(command, capsys):
    assert main([*command, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("-C, --workdir", "--config", "--json", "-v, --verbose"))


def test_top_level_help_documents_the_exit_codes(capsys):
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS + ["data"])
    assert "Exit codes" in out and all(f"{code} " in out for code in ("0", "1", "2", "3", "4", "130"))
    assert "drift --exit-code" in out


def test_version(capsys):
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out == f"transferops {__version__}\n" == "transferops 0.1.0\n"


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "transferops.cli", "--help"], capture_output=True, text=True, check=True)
    assert all(c in out.stdout for c in COMMANDS)
    version = subprocess.run([sys.executable, "-m", "transferops.cli", "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout) == (0, "transferops 0.1.0\n")


def test_command_defaults():
    """The train command keeps its options and defaults (global options default to unset)."""
    from transferops.cli.output import State

    ctx = cli.commands["train"].make_context("train", ["--source", "resnet50:IMAGENET1K_V2"], obj=State())
    assert ctx.params == {"source": "resnet50:IMAGENET1K_V2", "strategy": "auto", "data": None, "backbone": None,
                          "source_profile": None, "epochs": None}
    assert ctx.obj == State()
    ctx = cli.commands["train"].make_context("train", ["--source", "s", "-C", "p", "--json"], obj=State())
    assert ctx.obj.workdir == Path("p") and ctx.obj.json and ctx.obj.config is None


# --------------------------------------------------------------------------- global options
@pytest.fixture
def bad_project(tmp_path) -> Path:
    """A project whose settings are invalid: any command that reads it fails with ConfigError."""
    proj = tmp_path / "bad"
    proj.mkdir()
    (proj / "transferops.yaml").write_text("training: {epochs: -1}\n")
    return proj


@pytest.mark.parametrize("argv", [
    ["-C", "{p}", "status"], ["status", "-C", "{p}"],
    ["--workdir", "{p}", "status"], ["status", "--workdir", "{p}"],
    ["--json", "-C", "{p}", "status"], ["--workdir={p}", "data", "list"], ["data", "-C", "{p}", "list"],
])
def test_global_options_before_and_after_the_subcommand(argv, bad_project, tmp_path, monkeypatch, capsys):
    """Each spelling reads the given folder (whose settings are invalid); the current folder is fine."""
    monkeypatch.chdir(tmp_path)
    assert main([a.format(p=bad_project) for a in argv]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "epochs" in err and "Traceback" not in err


def test_the_commands_value_wins_over_the_groups(bad_project, tmp_path, capfd):
    good = tmp_path / "good"
    assert main(["-C", str(bad_project), "status", "-C", str(good), "--json"]) == EXIT_OK
    assert json.loads(capfd.readouterr().out) == []
    assert main(["-C", str(good), "status", "-C", str(bad_project), "--json"]) == EXIT_FAILURE
    cfg = tmp_path / "good.yaml"
    cfg.write_text("training: {epochs: 2}\n")
    # --config before, on a project given after
    assert main(["--config", str(bad_project / "transferops.yaml"), "status", "-C", str(good)]) == EXIT_FAILURE
    assert main(["--config", str(bad_project / "transferops.yaml"), "status", "-C", str(good),
                 "--config", str(cfg), "--json"]) == EXIT_OK


def test_json_before_the_subcommand(tmp_path, capfd):
    assert main(["--json", "status", "-C", str(tmp_path)]) == EXIT_OK
    assert json.loads(capfd.readouterr().out) == []


def test_init_with_the_folder_before_the_subcommand(tmp_path, capfd):
    assert main(["-C", str(tmp_path / "a"), "init", "--json"]) == EXIT_OK
    assert json.loads(capfd.readouterr().out)["project"] == str((tmp_path / "a").resolve())
    assert (tmp_path / "a" / ".dvc").is_dir()


def test_only_the_demo_defaults_to_demo_workdir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--json"]) == EXIT_OK
    assert (tmp_path / ".dvc").is_dir() and not (tmp_path / "demo-workdir").exists()
    assert json.loads(capsys.readouterr().out)["project"] == str(tmp_path)


def test_status_on_an_empty_project_is_an_empty_json_list(tmp_path, capsys):
    assert main(["status", "--workdir", str(tmp_path), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


def test_status_without_models_says_how_to_get_one(tmp_path, capfd):
    assert main(["status", "-C", str(tmp_path)]) == EXIT_OK
    out, err = capfd.readouterr()
    assert "No registered models" in out and "transferops train" in out


# --------------------------------------------------------------------------- exit codes and errors
@pytest.mark.parametrize("argv,message", [
    (["status", "--bogus"], "No such option"),
    (["--bogus", "status"], "No such option"),
    (["nosuchcommand"], "No such command"),
    (["train", "--source", "x", "--strategy", "nope"], "'nope' is not one of"),
    (["train"], "Missing option '--source'"),
    (["source", "--data", "d", "--epochs", "0"], "--epochs"),
    (["sample", "shapes"], "Missing argument 'DEST'"),
])
def test_usage_errors_exit_2_with_the_usage_line(argv, message, capfd):
    assert main(argv) == EXIT_USAGE
    out, err = capfd.readouterr()
    assert out == "" and message in err and "Usage: transferops" in err and "Traceback" not in err


def test_usage_error_with_json_is_one_json_error_object(capfd):
    assert main(["status", "--json", "--bogus"]) == EXIT_USAGE
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert doc["exit_code"] == EXIT_USAGE and doc["type"] == "NoSuchOption" and "--bogus" in doc["error"]
    assert "No such option" in err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_user_errors_are_one_clear_line(tmp_path, capfd):
    full = tmp_path / "full"
    (full / "x").mkdir(parents=True)
    assert main(["sample", "shapes", str(full)]) == EXIT_FAILURE
    out, err = capfd.readouterr()
    line = _one_error_line(err)
    assert out == "" and line.startswith("transferops sample: error: ") and "is not empty" in line
    assert "Traceback" not in err

    (tmp_path / "transferops.yaml").write_text("training: {epochs: -1}\n")
    assert main(["status", "--workdir", str(tmp_path)]) == EXIT_FAILURE
    err = capfd.readouterr().err
    assert err.startswith("transferops status: error: ") and "Traceback" not in err


def test_user_error_with_json_is_one_json_error_object(tmp_path, capfd):
    (tmp_path / "full" / "x").mkdir(parents=True)
    assert main(["sample", "shapes", str(tmp_path / "full"), "--json"]) == EXIT_FAILURE
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert doc["exit_code"] == EXIT_FAILURE and doc["type"] == "InputError" and "is not empty" in doc["error"]
    assert "is not empty" in err


def test_missing_data_folder_is_not_mistaken_for_a_revision(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path), "--source", "x", "--data", "./nope"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE and "data folder ./nope does not exist" in err and "Traceback" not in err


def _raise_a_bug(*_args, **_kwargs):
    return 1 / 0  # the line the error line must name


BUG_LINE = _raise_a_bug.__code__.co_firstlineno + 1


def test_a_bug_names_its_type_and_origin_and_suggests_v(tmp_path, monkeypatch, capfd):
    from tasks import registry

    monkeypatch.setattr(registry, "list_versions", _raise_a_bug)
    assert main(["status", "-C", str(tmp_path)]) == EXIT_FAILURE
    out, err = capfd.readouterr()
    line = _one_error_line(err)
    assert out == "" and "ZeroDivisionError: division by zero" in line
    assert f"{__file__}:{BUG_LINE}" in line and "-v" in line and "Traceback" not in err

    assert main(["status", "-C", str(tmp_path), "-v"]) == EXIT_FAILURE
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and "return 1 / 0" in err and "ZeroDivisionError" in err

    assert main(["-v", "status", "-C", str(tmp_path), "--json"]) == EXIT_FAILURE
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert doc["exit_code"] == EXIT_FAILURE and doc["type"] == "ZeroDivisionError" and "Traceback" in err


def test_interrupt_exits_130(tmp_path, monkeypatch, capfd):
    from tasks import registry

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "list_versions", interrupted)
    assert main(["status", "-C", str(tmp_path)]) == EXIT_INTERRUPTED
    assert "interrupted" in capfd.readouterr().err


def _with_truncated_png(folder: Path) -> Path:
    from transferops.samples import write_shapes

    src = write_shapes(folder, per_class=10, classes=3)
    path = src / "circle" / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path, "PNG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return src


@pytest.mark.integration
def test_failed_validation_exits_3(tmp_path, capfd):
    src = _with_truncated_png(tmp_path / "src")
    assert main(["data", "add", str(src), "-C", str(tmp_path / "proj")]) == EXIT_VALIDATION
    out, err = capfd.readouterr()
    assert out == "" and "transferops data add: error: " in err and "cut.png" in err
    assert "Traceback" not in err and not (tmp_path / "proj" / "data.dvc").exists()
    assert main(["data", "add", str(src), "-C", str(tmp_path / "proj"), "--json"]) == EXIT_VALIDATION
    doc = json.loads(capfd.readouterr().out)
    assert doc["exit_code"] == EXIT_VALIDATION and doc["type"] == "DataValidationError"


# --------------------------------------------------------------------------- drift and profiles
def test_user_errors_of_drift_are_one_clear_line(tmp_path, capfd, source_bundle):
    code = main(["drift", "--workdir", str(tmp_path), "--source", str(source_bundle), "--data", str(tmp_path / "nope")])
    out, err = capfd.readouterr()
    assert code == EXIT_FAILURE and "does not exist" in err and "Traceback" not in err
    assert _one_error_line(err).startswith("transferops drift: error: ")
    assert main(["drift", "--workdir", str(tmp_path), "--data", str(tmp_path)]) == EXIT_FAILURE
    assert "pass --source" in capfd.readouterr().err


def test_drift_command_reports_the_alibi_fields(tmp_path, capsys, source_bundle, shapes_dir):
    from transferops.samples import write_shapes

    shifted = write_shapes(tmp_path / "shifted", per_class=30, classes=3, style="shifted")
    assert main(["drift", "--workdir", str(tmp_path), "--source", str(source_bundle), "--data", str(shifted), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"is_drift", "p_val", "threshold", "distance", "similarity"} <= set(res)
    assert res["is_drift"] and res["similarity"] < 0.2
    assert main(["drift", "--workdir", str(tmp_path), "--source", str(source_bundle), "--data", str(shapes_dir), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert not same["is_drift"] and same["similarity"] > 0.8


def test_drift_exit_code(tmp_path, capfd, source_bundle, shapes_dir):
    """--exit-code: 4 when drift is detected (the report is still printed), 0 when not."""
    from transferops.samples import write_shapes

    shifted = write_shapes(tmp_path / "shifted", per_class=30, classes=3, style="shifted")
    base = ["drift", "-C", str(tmp_path), "--source", str(source_bundle), "--exit-code"]
    assert main([*base, "--data", str(shifted)]) == EXIT_DRIFT
    out, err = capfd.readouterr()
    assert "drift by mmd" in out and "no drift" not in out
    assert main([*base, "--data", str(shifted), "--json"]) == EXIT_DRIFT
    assert json.loads(capfd.readouterr().out)["is_drift"] is True
    assert main([*base, "--data", str(shapes_dir)]) == EXIT_OK
    assert "no drift" in capfd.readouterr().out


def test_drift_of_unlabelled_data(tmp_path, capfd, source_bundle, shapes_dir):
    """--unlabelled: every image counts, whatever its folder; a flat folder is unlabelled by itself."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted(shapes_dir.rglob("*.png"))):
        (flat / f"{i:03d}.png").write_bytes(f.read_bytes())
    base = ["drift", "-C", str(tmp_path), "--source", str(source_bundle), "--json", "--exit-code"]
    assert main([*base, "--data", str(shapes_dir), "--unlabelled"]) == EXIT_OK
    labelled_as_none = json.loads(capfd.readouterr().out)
    assert main([*base, "--data", str(flat)]) == EXIT_OK
    flat_res = json.loads(capfd.readouterr().out)
    for res in (labelled_as_none, flat_res):
        assert not res["is_drift"] and res["tests"][0]["n_test"] == 90


def test_profile_then_drift_with_the_profile_alone(tmp_path, capsys, source_bundle, shapes_dir):
    from transferops.drift.profile import Profile
    from transferops.samples import write_shapes

    out = tmp_path / "shapes.profile.npz"
    assert main(["profile", "--workdir", str(tmp_path), "--backbone", "resnet18", "--weights", str(source_bundle),
                 "--data", str(shapes_dir), "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    prof = Profile.load(out)
    assert info["samples"] == len(prof) == 90 and prof.probs.shape == (90, 3) and len(prof.classes) == 3
    assert prof.meta["backbone"] == "resnet18" and prof.meta["weights"] == str(source_bundle)
    shifted = write_shapes(tmp_path / "shifted", per_class=30, classes=3, style="shifted")
    # no --source: the profile names the network that made it
    assert main(["drift", "--workdir", str(tmp_path), "--profile", str(out), "--data", str(shifted)]) == 0
    table = capsys.readouterr().out
    assert all(t in table for t in ("mmd", "classifier", "ks", "bbsd", "similarity")) and "drift by mmd" in table
    assert main(["drift", "--workdir", str(tmp_path), "--profile", str(out), "--data", str(shifted), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["is_drift"] and {t["test"] for t in res["tests"]} == {"mmd", "classifier", "ks", "bbsd"}
    assert set(res["per_class_distance"]) == set(prof.classes)


def test_profile_refuses_random_weights(tmp_path, capsys, shapes_dir):
    code = main(["profile", "--workdir", str(tmp_path), "--backbone", "resnet18", "--weights", "none",
                 "--data", str(shapes_dir)])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE and "needs the pretrained weights" in err and "Traceback" not in err


# --------------------------------------------------------------------------- telemetry
@pytest.mark.parametrize("module", ["flows.train", "flows.data", "transferops.cli"])
def test_importing_an_entry_point_turns_telemetry_off_before_prefect_loads(module, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "GX_ANALYTICS_ENABLED")}
    code = (f"import {module}\nfrom transferops.cli import main\nimport sys\nmain(['status', '--json'])\n"
            "from prefect._internal.analytics.enabled import is_telemetry_enabled\n"
            "import os; print(is_telemetry_enabled(), os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DVC_NO_ANALYTICS'])")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False true 1"
