"""The ``transferops`` command line (``transferops = "transferops.cli:main"``).

Built on **click**, chosen over argparse and typer:

- explicit groups (``transferops data add``) and *global options* that are accepted both
  before the subcommand and after it (``transferops -C DIR status`` as with ``git -C``, and
  ``transferops status -C DIR``), merged in one place;
- ``click.version_option`` for ``--version``, and built-in shell completion
  (``eval "$(_TRANSFEROPS_COMPLETE=bash_source transferops)"``, also ``zsh_source``/``fish_source``);
- a ``UsageError`` (unknown option, bad value, missing argument) is exit code 2 with the
  usage line, the convention of POSIX tools, and help is consistent across commands;
- it imports in milliseconds and brings nothing else in: no Prefect, MLflow, DVC or GX at
  import time (commands import flows and adapters inside their bodies), so ``--help`` stays
  fast and ``data add`` never imports Prefect. typer would add type-hint introspection and
  rich help rendering on top of click for no gain here; click is already installed (Prefect
  depends on it through typer) and is stated in pyproject's dependencies.

Layout: :mod:`transferops.cli.app` (the commands and :func:`main`), :mod:`transferops.cli.output`
(stdout/stderr discipline, tables, error reporting), :mod:`transferops.cli.demo` (the demo story),
:mod:`transferops.cli.loop` (the monitoring loop's commands), :mod:`transferops.cli.history` (the alias
history: ``history`` and ``rollback``), :mod:`transferops.cli.promote` (``promote``, the approval),
:mod:`transferops.cli.lineage` (``lineage``: how a version was made, and its re-run).
Exit codes are in :mod:`transferops.errors` and in ``transferops --help``.
"""

from transferops.cli import (  # noqa: F401,E402  (importing a module registers its commands)
    history,  # history and rollback
    lineage,  # lineage (how a version was made; re-materialise it)
    loop,  # monitor, retrain, deploy and serve
    promote,  # promote (approval)
)
from transferops.cli.app import cli, main

__all__ = ["cli", "main"]
