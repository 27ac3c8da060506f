"""Where the command line's output goes, and how errors are shown.

- **Results** (tables, the drift verdict) go to stdout; everything meant for a person while a
  command runs (progress bars, Prefect and library logs, notes) goes to stderr.
- **--json**: for the whole command, file descriptor 1 is pointed at stderr at the OS level
  (``os.dup2``) and ``sys.stdout`` is swapped for ``sys.stderr``, so nothing else can reach
  stdout: not a ``print`` in a flow, not a progress bar, not git or dvc run as child processes.
  At the end the real stdout is restored and receives exactly one JSON document: the
  command's result, or on an error ``{"error": ..., "details": [...], "type": ...,
  "exit_code": ...}``.
- **Errors**: a :class:`~transferops.errors.TransferopsError` (or a pydantic ``ValidationError``
  of a flow's parameters) is the user's to fix: one line plus at most 20 detail lines, and its
  ``exit_code``. Anything else is a bug: one line with its type, message and the file:line it
  was raised at, and the full traceback with ``-v``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import click

from transferops.errors import EXIT_FAILURE, TransferopsError

MAX_DETAIL_LINES = 20
_NOTHING = object()


@dataclass
class State:
    """The global options, merged from the group (before the subcommand) and the command (after it)."""

    workdir: Path | None = None
    config: str | None = None
    json: bool = False
    verbose: bool = False
    command: str = "transferops"  # the command path, for error lines: "transferops data add"

    def project(self, default: str = ".") -> Path:
        """The project folder: ``-C/--workdir``, else ``default``."""
        return self.workdir if self.workdir is not None else Path(default)


# --------------------------------------------------------------------------- stdout discipline
def _flush(*streams: Any) -> None:
    for s in streams:
        try:
            if s is not None:
                s.flush()
        except (OSError, ValueError):  # a closed stream: nothing to flush
            pass


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (``sys.stdout`` and file descriptor 1, so child
    processes too) to stderr until the block ends; then restore stdout as it was."""
    saved_sys = sys.stdout
    _flush(saved_sys, sys.__stdout__)  # what was written before belongs to the real stdout
    saved_fd: int | None
    try:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no fd 1 or 2 (an embedding host): the Python-level swap still holds
        saved_fd = None
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        # buffered writes of the redirect's lifetime go to stderr, where fd 1 still points
        _flush(sys.stdout, saved_sys, sys.__stdout__)
        sys.stdout = saved_sys
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _console(stderr: bool):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # off a terminal rich falls back to 80 columns, which folds every table cell
    return Console(file=stream, width=None if stream.isatty() else 140)


def _print(console: Any, objects: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # a line of text is not folded at the console's width: it stays greppable
    if all(isinstance(o, str) for o in objects):
        kwargs.setdefault("soft_wrap", True)
    console.print(*objects, **kwargs)


def render_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None):
    """A rich table of ``rows`` (``columns``, default: the first row's keys)."""
    from rich.table import Table

    cols = columns or (list(rows[0].keys()) if rows else [])
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str("" if v is None else v)
                        for v in (r.get(c) for c in cols)])
    return table


@dataclass
class Output:
    """A command's output: its result (one JSON document or a table) and human lines."""

    json: bool = False
    document: Any = field(default=_NOTHING)

    def result(self, doc: Any, title: str = "", columns: list[str] | None = None) -> None:
        """The command's result: the JSON document with --json, else a table on stdout
        (a list of rows, or a dict shown as field/value rows)."""
        if self.json:
            if self.document is not _NOTHING:
                raise RuntimeError("a command emitted two JSON documents")
            self.document = doc
            return
        rows = doc if isinstance(doc, list) else [{"field": k, "value": v} for k, v in doc.items()]
        self.print(render_table(title, rows, columns))

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Human output: stdout, or stderr with --json (stdout then holds only the document)."""
        _print(_console(stderr=self.json), objects, kwargs)

    def note(self, *objects: Any, **kwargs: Any) -> None:
        """Progress and notes for a person: always stderr."""
        _print(_console(stderr=True), objects, kwargs)

    def write_document(self) -> None:
        """Write the JSON document to the (restored) stdout."""
        if self.json:
            write_json(None if self.document is _NOTHING else self.document)


def write_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    _flush(sys.stdout)


# --------------------------------------------------------------------------- errors
def _type_name(exc: BaseException) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _lines(exc: BaseException) -> list[str]:
    text = str(exc).strip()
    return text.splitlines() if text else [type(exc).__name__]


def is_user_error(exc: BaseException) -> bool:
    """A problem the user can fix: a TransferopsError, or bad parameters of a flow (pydantic)."""
    if isinstance(exc, TransferopsError):
        return True
    if "pydantic" in sys.modules:
        from pydantic import ValidationError

        return isinstance(exc, ValidationError)
    return False


def exit_code_of(exc: BaseException) -> int:
    return int(getattr(exc, "exit_code", EXIT_FAILURE)) if isinstance(exc, TransferopsError) else EXIT_FAILURE


def raised_at(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc``'s traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


def report_error(exc: BaseException, state: State, json_mode: bool) -> int:
    """Show ``exc`` on stderr (and as a JSON error object on stdout with --json); its exit code."""
    code = exit_code_of(exc)
    if state.verbose:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    label = click.style("error:", fg="red", bold=True)
    lines = _lines(exc)
    if is_user_error(exc):
        first, details = lines[0], lines[1:]
        click.echo(f"{state.command}: {label} {first}", err=True)
        for line in details[:MAX_DETAIL_LINES]:
            click.echo(f"  {line}", err=True)
        if len(details) > MAX_DETAIL_LINES:
            click.echo(f"  ... {len(details) - MAX_DETAIL_LINES} more lines", err=True)
        doc = {"error": first, "details": details, "type": type(exc).__name__, "exit_code": code}
    else:
        first = f"unexpected {_type_name(exc)}: {lines[0]} (raised at {raised_at(exc)})"
        hint = "" if state.verbose else "; run with -v for the traceback"
        click.echo(f"{state.command}: {label} {first}{hint}", err=True)
        doc = {"error": first, "details": [], "type": _type_name(exc), "exit_code": code}
    if json_mode:
        write_json(doc)
    return code
