"""Write infra/.env from infra/.env.example with every CHANGE-ME value replaced by a new random secret.

    python3 infra/make_env.py            # refuses to overwrite an existing infra/.env
    python3 infra/make_env.py --force    # new secrets (Postgres keeps the old ones until ALTER ROLE)

Secrets are 32 characters of letters and digits (``secrets``): safe inside connection URLs,
long enough for MinIO (at least 8 for the secret key). The compose stack's ``preflight``
service refuses to start the stack while any value still reads CHANGE-ME.
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPHABET = string.ascii_letters + string.digits


def new_secret(n: int = 32) -> str:
    """``n`` random letters and digits."""
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def render(example: str) -> str:
    """The example's text with each ``KEY=CHANGE-ME...`` line given a fresh secret."""
    out = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value.startswith("CHANGE-ME"):
            line = f"{key}={new_secret()}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write infra/.env with generated secrets")
    p.add_argument("--force", action="store_true", help="overwrite an existing .env")
    p.add_argument("--example", type=Path, default=HERE / ".env.example")
    p.add_argument("--out", type=Path, default=HERE / ".env")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; keep it, or pass --force for new secrets (Postgres keeps its old "
              "password until ALTER ROLE or a fresh pgdata volume)", file=sys.stderr)
        return 1
    args.out.write_text(render(args.example.read_text()))
    args.out.chmod(0o600)  # secrets: readable by the owner only
    print(f"wrote {args.out} with new secrets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
