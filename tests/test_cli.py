import json
import subprocess
import sys
from pathlib import Path

import pytest

from transferops.cli import get_args_parser, main

COMMANDS = ["init", "demo", "source", "train", "profile", "drift", "status", "sample"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and "--json" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "transferops.cli", "--help"], capture_output=True, text=True, check=True)
    assert all(c in out.stdout for c in COMMANDS)


def test_status_on_an_empty_project_is_an_empty_json_list(tmp_path, capsys):
    assert main(["status", "--workdir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_user_errors_are_one_clear_line(tmp_path, capsys, source_bundle):
    code = main(["drift", "--workdir", str(tmp_path), "--source", str(source_bundle), "--data", str(tmp_path / "nope")])
    cap = capsys.readouterr()
    err = cap.out + cap.err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "transferops.yaml").write_text("training: {epochs: -1}\n")
    assert main(["status", "--workdir", str(tmp_path)]) == 2


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


def test_parser_defaults():
    args = get_args_parser().parse_args(["train", "--source", "resnet50:IMAGENET1K_V2"])
    assert args.strategy == "auto" and args.data is None and args.workdir is None


def test_only_the_demo_defaults_to_demo_workdir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--json"]) == 0
    assert (tmp_path / ".dvc").is_dir() and not (tmp_path / "demo-workdir").exists()
    assert json.loads(capsys.readouterr().out)["project"] == str(tmp_path)


def test_missing_data_folder_is_not_mistaken_for_a_revision(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path), "--source", "x", "--data", "./nope"])
    assert code == 2 and "data folder ./nope does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["flows.train", "flows.data", "transferops.cli"])
def test_importing_an_entry_point_turns_telemetry_off_before_prefect_loads(module, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "GX_ANALYTICS_ENABLED")}
    code = (f"import {module}\nfrom transferops.cli import main\nimport sys\nmain(['status', '--json'])\n"
            "from prefect._internal.analytics.enabled import is_telemetry_enabled\n"
            "import os; print(is_telemetry_enabled(), os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DVC_NO_ANALYTICS'])")
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False true 1"


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
    assert code == 2 and "needs the pretrained weights" in capsys.readouterr().err
