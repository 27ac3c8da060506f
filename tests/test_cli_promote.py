"""`transferops promote`: the approval moves champion and records who and why, against MLflow on SQLite."""

import json

import pytest

from transferops.cli import cli, main
from transferops.errors import EXIT_FAILURE, EXIT_OK


@pytest.fixture
def registered(tmp_path):
    """A project whose registry holds versions 1 (champion) and 2 (challenger, a failed gate), without training."""
    from tasks import registry
    from transferops.config import load_settings

    s = load_settings(tmp_path)
    c = registry.client(s)
    registry.ensure_registered(c, s.model_name)
    for tags in ({}, {"transferops.gate.class_drop": "fail 0.2000 <= 0.1000", "transferops.gate.metric": "pass 0.0500 >= 0.0000",
                      "transferops.promotion": "keep_champion"}):
        c.create_model_version(s.model_name, (tmp_path / "model").as_uri(), tags=tags)
    c.set_registered_model_alias(s.model_name, "champion", "1")
    c.set_registered_model_alias(s.model_name, "challenger", "2")
    return tmp_path


def test_promote_moves_champion_and_records_who_and_why(registered, capfd, monkeypatch):
    from tasks import registry
    from transferops.config import load_settings

    monkeypatch.setenv("TRANSFEROPS_USER", "ada")
    assert main(["promote", "2", "-C", str(registered), "--reason", "class drop is one image of five", "--yes",
                 "--json"]) == EXIT_OK
    captured = capfd.readouterr()
    doc = json.loads(captured.out)
    assert doc["version"] == "2" and doc["previous_champion"] == "1" and doc["approved_by"] == "ada"
    assert doc["failed_gates"] == {"class_drop": "fail 0.2000 <= 0.1000"} and "class_drop" in captured.err
    s = load_settings(registered)
    v = registry.alias_version(s, s.model_name, "champion")
    assert v.version == "2"
    assert v.tags["transferops.approved_by"] == "ada" and v.tags["transferops.approved_reason"] == "class drop is one image of five"
    assert v.tags["transferops.approved_at"].startswith(doc["approved_at"][:10])


@pytest.mark.parametrize("argv,message", [
    (["promote", "2", "--yes"], "pass --reason TEXT"),
    (["promote", "2", "--reason", "  ", "--yes"], "pass --reason TEXT"),
    (["promote", "9", "--reason", "why", "--yes"], "has no version 9 in sqlite:"),
    (["promote", "2", "--reason", "why"], "pass --yes to confirm without a terminal"),  # pytest's stdin is no tty
])
def test_promote_refuses_with_one_line_and_moves_nothing(registered, capfd, argv, message):
    from tasks import registry
    from transferops.config import load_settings

    assert main([*argv, "-C", str(registered)]) == EXIT_FAILURE
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("transferops promote: error:")
    s = load_settings(registered)
    assert registry.alias_version(s, s.model_name, "champion").version == "1"
    assert "transferops.approved_by" not in registry.alias_version(s, s.model_name, "challenger").tags


def test_promote_has_help_and_is_listed(capsys):
    assert "promote" in cli.commands
    assert main(["promote", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "--reason" in out and "--yes" in out and "--json" in out
