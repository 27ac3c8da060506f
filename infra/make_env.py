"""Write infra/.env from infra/.env.example with every CHANGE-ME placeholder replaced by a new random secret.

    python3 infra/make_env.py            # refuses to overwrite an existing infra/.env
    python3 infra/make_env.py --force    # new secrets (Postgres keeps the old ones until ALTER ROLE,
                                         # MLflow its admin password until changed through its API)

A placeholder is ``CHANGE-ME`` and the name characters after it, anywhere in a value, so
``PREFECT_API_AUTH_STRING=transferops:CHANGE-ME-prefect-password`` keeps its ``transferops:``.
Secrets are 32 characters of letters and digits (``secrets``): safe inside connection URLs and
``user:password`` strings, long enough for MinIO (8), MLflow's admin password (12) and the
compose stack's ``preflight`` service, which refuses to start the stack while any value still
reads CHANGE-ME.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPHABET = string.ascii_letters + string.digits
PLACEHOLDER = re.compile(r"CHANGE-ME[A-Za-z0-9_-]*")


def new_secret(n: int = 32) -> str:
    """``n`` random letters and digits."""
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def render(example: str) -> str:
    """The example's text with each CHANGE-ME placeholder in a ``KEY=value`` line replaced by a
    fresh secret (one per placeholder); comments and other values are kept as they are."""
    out = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            line = f"{key}={PLACEHOLDER.sub(lambda _: new_secret(), value)}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write ``--out`` (default infra/.env, mode 600) from ``--example``; 1 if it exists without ``--force``."""
    p = argparse.ArgumentParser(description="write infra/.env with generated secrets")
    p.add_argument("--force", action="store_true", help="overwrite an existing .env")
    p.add_argument("--example", type=Path, default=HERE / ".env.example")
    p.add_argument("--out", type=Path, default=HERE / ".env")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; keep it, or pass --force for new secrets (Postgres keeps its old "
              "password until ALTER ROLE or a fresh pgdata volume, MLflow its admin password until changed "
              "through its API)", file=sys.stderr)
        return 1
    example = args.example.read_text()
    # created 0600 rather than chmod-ed after writing: the secrets are never readable by others
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render(example))
    args.out.chmod(0o600)  # an existing file (--force) keeps its old mode through os.open
    keys = [line.partition("=")[0] for line in example.splitlines()
            if not line.lstrip().startswith("#") and PLACEHOLDER.search(line.partition("=")[2])]
    print(f"wrote {args.out} with new secrets for {', '.join(keys)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
