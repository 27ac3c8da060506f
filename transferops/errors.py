"""The errors a user can fix, and the exit codes the command line maps them to.

Every exception that means "your input, file or configuration is wrong" derives from
:class:`TransferopsError`: the CLI prints its message as one line (detail lines below it)
and exits with its ``exit_code``. Anything else is a bug and is shown as one, with where
it came from. Existing names keep their builtin bases (``ValueError``, ``RuntimeError``)
so callers that caught those still do.
"""

from __future__ import annotations

# Exit codes of the ``transferops`` command (documented in the README). 1 and 2 follow
# click and POSIX tools; 3 and 4 let cron jobs and CI branch on the two outcomes that are
# not failures of transferops itself.
EXIT_OK = 0
EXIT_FAILURE = 1  # an error: a user error (one line) or a bug (with its origin)
EXIT_USAGE = 2  # the command line itself is wrong: unknown option, missing argument
EXIT_VALIDATION = 3  # the data failed validation; nothing was versioned, trained or registered
EXIT_DRIFT = 4  # ``drift --exit-code`` (and ``monitor --exit-code``): drift was detected
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class TransferopsError(Exception):
    """A problem the user can fix; the message names the file or field and the fix."""

    exit_code: int = EXIT_FAILURE


class InputError(TransferopsError, ValueError):
    """An argument, file or value is unusable (a missing folder, an unknown name, a bad option)."""
