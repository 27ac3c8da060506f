
import pytest

from transferops.config import ConfigError, load_settings


def test_defaults_point_into_the_project(tmp_path):
    s = load_settings(tmp_path)
    assert s.project_dir == tmp_path.resolve()
    assert s.resolved_tracking_uri == f"sqlite:///{tmp_path.resolve()}/.transferops/mlflow.db"
    assert s.resolved_dvc_remote == str(tmp_path.resolve() / ".transferops" / "dvc-remote")
    assert s.training.epochs == 8 and s.drift.alpha == 0.05


def test_yaml_overrides_defaults_and_env_overrides_yaml(tmp_path, monkeypatch):
    (tmp_path / "transferops.yaml").write_text("training:\n  epochs: 3\n  lr: 0.01\nmodel_name: from-yaml\n")
    s = load_settings(tmp_path)
    assert (s.training.epochs, s.training.lr, s.model_name) == (3, 0.01, "from-yaml")
    monkeypatch.setenv("TRANSFEROPS_TRAINING__EPOCHS", "5")
    monkeypatch.setenv("TRANSFEROPS_TRACKING_URI", "http://127.0.0.1:5000")
    s = load_settings(tmp_path)
    assert s.training.epochs == 5  # env beats YAML
    assert s.training.lr == 0.01  # YAML value kept where env is silent
    assert s.resolved_tracking_uri == "http://127.0.0.1:5000"


def test_explicit_config_file_and_errors_name_the_field(tmp_path):
    cfg = tmp_path / "other.yaml"
    cfg.write_text("training:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"training\.epochs.*other\.yaml"):
        load_settings(tmp_path, cfg)
    cfg.write_text("trainin:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="trainin"):
        load_settings(tmp_path, cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path, tmp_path / "missing.yaml")
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(tmp_path, cfg)


def test_credentials_are_masked_in_the_logged_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFEROPS_TRACKING_URI", "postgresql://user:secret@127.0.0.1/mlflow")
    logged = load_settings(tmp_path).public_dict()
    assert "secret" not in str(logged)
    assert logged["tracking_uri"] == "postgresql://***@127.0.0.1/mlflow"
