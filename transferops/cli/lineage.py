"""``transferops lineage VERSION [--to DIR]``: how a version was made, and what it takes to make it again.

It prints the chain a version records (``transferops.lineage``): data revision and DVC hash,
held-out data, source with its weights hash, strategy, drift against the source and against
the previous training data, code commit, Prefect flow run, trigger, gate verdicts. ``--to DIR``
checks the data version out into ``DIR/data`` (proved by DVC's hash), writes the run's resolved
settings as ``DIR/transferops.yaml`` and prints the ``transferops train`` command that re-runs
the training. It registers on the group of :mod:`transferops.cli.app` when the package is
imported and imports MLflow and DVC only when it runs.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import click

from transferops.cli.app import cli, command
from transferops.cli.output import Output, State
from transferops.errors import InputError

NOT_RECORDED = "not recorded"
# Where the re-run's project and stores are: the machine's, from the environment, never a
# recorded (and masked) URI or the folder of whoever trained the version.
LOCATION_KEYS = ("project_dir", "tracking_uri", "dvc_remote_url", "dvc_remote_endpoint")
# TRANSFEROPS_* variables that choose locations or people, not training settings.
NOT_SETTINGS = {"TRANSFEROPS_CONFIG", "TRANSFEROPS_PROJECT_DIR", "TRANSFEROPS_USER",
                *(f"TRANSFEROPS_{k.upper()}" for k in LOCATION_KEYS)}


def rerun_settings(resolved: dict[str, Any], strategy: str | None, params: dict[str, Any] | None) -> dict[str, Any]:
    """The run's resolved settings as a YAML mapping ``load_settings`` reads: locations dropped, and a
    measured ``partial_finetune`` k fixed so the re-run trains the same blocks instead of probing again.

    >>> rerun_settings({"project_dir": "/p", "tracking_uri": "sqlite:///x", "strategy": {"budget": "low"}},
    ...                "partial_finetune", {"freeze_blocks": 3})
    {'strategy': {'budget': 'low', 'partial_freeze_blocks': 3}}
    """
    out = {k: v for k, v in resolved.items() if k not in LOCATION_KEYS}
    if strategy == "partial_finetune" and (params or {}).get("freeze_blocks") is not None:
        out["strategy"] = dict(out.get("strategy") or {}, partial_freeze_blocks=params["freeze_blocks"])
    return out


def train_argv(project: Path, config: Path, data_rev: str, source: str, strategy: str, backbone: str | None) -> list[str]:
    """The ``transferops train`` command line that re-runs a version's training.

    >>> shlex.join(train_argv(Path("/p"), Path("/r/t.yaml"), "abc", "resnet18:IMAGENET1K_V1", "lp_ft", "resnet18"))
    'transferops -C /p --config /r/t.yaml train --data abc --source resnet18:IMAGENET1K_V1 --strategy lp_ft'
    """
    argv = ["transferops", "-C", str(project), "--config", str(config), "train", "--data", data_rev,
            "--source", source, "--strategy", strategy]
    if backbone and not source.startswith("models:/") and (Path(source).suffix in (".pt", ".pth", ".bin")
                                                           or Path(source).is_file()):
        argv += ["--backbone", backbone]  # a state-dict file does not name its architecture
    return argv


def _chain(rec: Any) -> dict[str, Any]:
    """The version's lineage with its identity, the MLflow run and, for versions registered before
    the version tag existed, the Prefect flow run id from the run's own tag."""
    from tasks.tracking import FLOW_RUN_TAG
    from transferops.lineage import read_tags

    chain = read_tags(rec.tags)
    chain["prefect_flow_run_id"] = chain["prefect_flow_run_id"] or rec.run_tags.get(FLOW_RUN_TAG)
    flow = rec.run_tags.get("transferops.flow")
    if chain["trigger"] is None and flow:  # no trigger tag: a run started by hand (or a schedule)
        chain["trigger"] = {"flow": flow, "by": "hand" if flow == "train" else "unknown"}
    return {"model": rec.name, "version": rec.version, "aliases": list(rec.aliases), "mlflow_run_id": rec.run_id} | chain


def _text(value: Any) -> str:
    """A chain value as table text: a mapping one ``key: value`` line per entry (empty notes left
    out), None as "not recorded" (inside a mapping None is a value: ``null``)."""
    if value is None:
        return NOT_RECORDED
    if isinstance(value, dict):
        return "\n".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items() if v != "")
    return json.dumps(value) if isinstance(value, list) else str(value)


def _rows(c: dict[str, Any]) -> list[dict[str, str]]:
    """The chain as field/value rows, in the order a version was made."""
    order = ("aliases", "mlflow_run_id", "data_rev", "data_md5", "heldout_rev", "heldout_split", "source", "source_version", "backbone",
             "source_weights_sha256", "strategy", "strategy_params", "strategy_reason", "drift_vs_source",
             "drift_vs_previous", "git_sha", "prefect_flow_run_id", "trigger", "gates", "promotion", "test_accuracy")
    return [{"field": k, "value": _text(c.get(k))} for k in order]


def _overriding_env() -> list[str]:
    """TRANSFEROPS_* settings in this environment: they outrank the written file on a re-run."""
    return sorted(k for k in os.environ if k.startswith("TRANSFEROPS_") and k not in NOT_SETTINGS)


def materialise(s: Any, rec: Any, chain: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Data (``dest/data``, plus ``dest/heldout`` when the held-out data is another version), the run's
    settings (``dest/transferops.yaml``) and the re-run command; refuses what it cannot prove."""
    import yaml

    from tasks import lineage
    from transferops.config import CONFIG_FILENAME, load_settings

    if chain.get("role") == "source":
        raise InputError(f"{rec.name} v{rec.version} is a source model, made by `transferops source --data DIR`; "
                         "--to re-runs the training of target versions")
    need = [k for k in ("data_rev", "data_md5", "source", "strategy") if not chain.get(k)]
    if need:
        raise InputError(f"{rec.name} v{rec.version} does not record {', '.join(need)}; it cannot be re-run")
    dest = dest.expanduser().resolve()
    config = dest / CONFIG_FILENAME
    if config.exists():
        raise InputError(f"{config} exists; pass a new --to folder")
    resolved = lineage.resolved_config(s, rec.run_id)  # before any copy: a run without it stops here
    dest.mkdir(parents=True, exist_ok=True)
    data = lineage.checkout_data(s, chain["data_rev"], chain["data_md5"], dest / "data")
    out = {"dir": str(dest), "data": str(dest / "data"), "data_md5": chain["data_md5"], "data_md5_verified": True}
    if chain["heldout_rev"] and chain["heldout_rev"] != chain["data_rev"]:
        held = lineage.checkout_data(s, chain["heldout_rev"], None, dest / "heldout")
        out |= {"heldout": str(dest / "heldout"), "heldout_md5": held.md5}
    header = (f"# The settings {rec.name} v{rec.version} was trained with (MLflow run {rec.run_id}), written by\n"
              "# `transferops lineage`; the project, tracking URI and DVC remote come from the environment.\n")
    config.write_text(header + yaml.safe_dump(rerun_settings(resolved, chain["strategy"], chain["strategy_params"]),
                                              sort_keys=False))
    load_settings(s.project_dir, config)  # a setting this transferops no longer knows fails here, naming it
    # the version an alias named when the run trained, not wherever the alias points today
    source = chain.get("source_version") or chain["source"]
    argv = train_argv(s.project_dir, config, data.rev, source, chain["strategy"], chain["backbone"])
    return out | {"config": str(config), "argv": argv, "command": shlex.join(argv),
                  "source_check": lineage.check_source(s, source, chain["backbone"], chain["source_weights_sha256"]),
                  "environment_overrides": _overriding_env()}


@command(cli, "lineage", "show how VERSION was made (data, source, strategy, drift, code, run, gates); --to DIR: "
                         "re-materialise its data and config and print the command that re-runs it")
@click.argument("version")
@click.option("--model", default=None, help="registered model (default: the configured target model)")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="check the data version out into DIR/data, write the run's settings as DIR/transferops.yaml")
def lineage_cmd(state: State, out: Output, version: str, model: str | None, to: Path | None) -> None:
    from rich.markup import escape

    from tasks.lineage import read_version
    from transferops.config import load_settings

    s = load_settings(state.project(), state.config)
    rec = read_version(s, model or s.model_name, version.removeprefix("v"))
    chain = _chain(rec)
    missing = [k for k, v in chain.items() if v is None]
    if to is not None:
        out.note(f"re-materialising {rec.name} v{rec.version} into {to}")
        chain["materialised"] = materialise(s, rec, chain, to)
    if out.json:
        out.result(chain | {"not_recorded": missing})
        return
    out.result(_rows(chain), f"Lineage of {rec.name} v{rec.version}")
    done = chain.get("materialised")
    if done:
        check = done["source_check"]
        out.print(f"Data {chain['data_rev'][:12]} in {done['data']} (DVC hash {done['data_md5']} verified); "
                  f"settings in {done['config']}.")
        out.print(("[green]source[/]: " if check["matches"] else "[yellow]source[/]: ") + escape(check["note"]))
        if done["environment_overrides"]:
            out.print("[yellow]note[/]: these variables outrank the file on a re-run: " + ", ".join(done["environment_overrides"]))
        out.print("Re-run the training with:")
        out.print(done["command"], markup=False, highlight=False)
