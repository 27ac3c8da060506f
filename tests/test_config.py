
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


def test_transferops_config_names_the_file_and_an_explicit_file_beats_it(tmp_path, monkeypatch):
    (tmp_path / "transferops.yaml").write_text("model_name: from-project\n")
    env_file = tmp_path / "elsewhere" / "env.yaml"
    env_file.parent.mkdir()
    env_file.write_text("model_name: from-env-file\ndrift: {alpha: 0.01}\n")
    monkeypatch.setenv("TRANSFEROPS_CONFIG", str(env_file))
    s = load_settings(tmp_path)
    assert (s.model_name, s.drift.alpha, s.drift.n_permutations) == ("from-env-file", 0.01, 200)
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("model_name: from-argument\n")
    assert load_settings(tmp_path, explicit).model_name == "from-argument"
    monkeypatch.setenv("TRANSFEROPS_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match=r"config file .*gone\.yaml does not exist"):
        load_settings(tmp_path)


@pytest.mark.parametrize("text,field", [
    ("colour: red\n", "colour"),
    ("training:\n  epoch: 3\n", "training.epoch"),
])
def test_unknown_keys_are_refused_with_the_field_and_file(tmp_path, text, field):
    (tmp_path / "transferops.yaml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path)
    assert str(exc.value) == (f"config field '{field}' in {tmp_path.resolve() / 'transferops.yaml'}: "
                              "Extra inputs are not permitted; fix or remove it")


def test_invalid_yaml_and_empty_file(tmp_path):
    cfg = tmp_path / "transferops.yaml"
    cfg.write_text("training: [epochs: 2\n")
    with pytest.raises(ConfigError, match=r"transferops\.yaml is not valid YAML \(ParserError\); fix its syntax") as exc:
        load_settings(tmp_path)
    assert len(str(exc.value).splitlines()) == 1
    cfg.write_text("")
    assert load_settings(tmp_path).training.epochs == 8


def test_project_dir_precedence_and_env_errors_name_the_variable(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "transferops.yaml").write_text("training: {epochs: 2}\nproject_dir: /elsewhere\n")
    monkeypatch.setenv("TRANSFEROPS_PROJECT_DIR", str(other))
    s = load_settings()
    assert s.project_dir == other.resolve() and s.training.epochs == 2  # the YAML cannot move the project
    s = load_settings(tmp_path)  # an explicit folder beats TRANSFEROPS_PROJECT_DIR
    assert s.project_dir == tmp_path.resolve() and s.training.epochs == 8
    monkeypatch.setenv("TRANSFEROPS_TRAINING__EPOCHS", "-1")
    with pytest.raises(ConfigError, match="'training.epochs' in environment variable TRANSFEROPS_TRAINING__EPOCHS"):
        load_settings()


def test_the_infra_example_file_is_valid_and_spells_the_defaults():
    """infra/transferops.yaml.example is read by the same rules as a project's file, so a renamed
    setting fails here instead of in an operator's first run."""
    from pathlib import Path

    import yaml

    from transferops.config import Settings

    example = yaml.safe_load((Path(__file__).resolve().parent.parent / "infra" / "transferops.yaml.example").read_text())
    sections = {k: v for k, v in example.items() if isinstance(v, dict)}
    assert {"training", "strategy", "drift", "promotion", "monitor", "execution"} <= set(sections)
    settings = Settings(**example)
    for name in sections:
        section = getattr(settings, name)  # against the class's defaults: the tests' environment overrides some
        assert section.model_dump() == type(section)().model_dump(), f"{name}: the example is not the default"
