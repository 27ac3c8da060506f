"""infra/ cannot be brought up here (no container engine), so its files are checked as data:
the compose file parses, every image is pinned to a release, every service reports its
health, and every variable it reads is documented in .env.example or has a default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
ONE_SHOT = {"minio-init", "preflight"}  # run once and exit: `service_completed_successfully` is their health


def test_every_image_is_pinned_to_a_release():
    images = {name: svc["image"] for name, svc in COMPOSE["services"].items() if "image" in svc}
    assert {"postgres", "minio", "minio-init", "prefect-server", "mlflow"} <= set(images)
    for name, image in images.items():
        if name.startswith("worker-"):  # built here from infra/Dockerfile.worker
            assert "build" in COMPOSE["services"][name] and image.endswith(":local")
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} names no tag; pin a release"
        assert tag != "latest" and re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), \
            f"{name}: {image} is not pinned to a release (a major-only or floating tag moves under you)"
        assert not repo.startswith(("minio/", "docker.io/minio/")), \
            f"{name}: {image}: MinIO's Docker Hub repositories are gone; use quay.io/minio"


def test_every_long_running_service_has_a_healthcheck():
    for name, svc in COMPOSE["services"].items():
        if name in ONE_SHOT:
            continue
        check = svc.get("healthcheck", {}).get("test")
        assert check, f"{name} has no healthcheck"
        if name.startswith("worker-"):  # the worker's own health server, started by the flag
            assert "--with-healthcheck" in svc["command"] and "8080/health" in " ".join(check)


def test_every_variable_is_documented_or_defaulted():
    text = (INFRA / "docker-compose.yml").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (INFRA / ".env.example").read_text(), re.M))
    # ${VAR}, ${VAR:?msg}, ${VAR:-default}; $${VAR} is the container's own shell, not compose's
    used = re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(:?[-?][^}]*)?\}", text)
    assert used
    for var, rest in used:
        assert var in documented or rest.lstrip(":").startswith("-"), \
            f"${{{var}}} is read by docker-compose.yml but neither documented in infra/.env.example nor defaulted"


def _preflight(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The preflight service's own script, unescaped as compose does ($$ -> $), run by sh."""
    script = COMPOSE["services"]["preflight"]["entrypoint"][2].replace("$$", "$")
    return subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True)


def test_preflight_refuses_placeholders_and_short_secrets_and_make_env_passes_it(tmp_path):
    for svc in ("postgres", "minio"):  # nothing stores data before the check passed
        assert COMPOSE["services"][svc]["depends_on"]["preflight"]["condition"] == "service_completed_successfully"
    example = dotenv((INFRA / ".env.example").read_text())
    bad = _preflight(example)
    assert bad.returncode == 1 and "CHANGE-ME" in bad.stderr and "make_env.py" in bad.stderr
    short = _preflight(example | {"POSTGRES_PASSWORD": "short", "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "s" * 8})
    assert short.returncode == 1 and "POSTGRES_PASSWORD needs at least 12" in short.stderr

    out = tmp_path / ".env"
    run = [sys.executable, str(INFRA / "make_env.py"), "--out", str(out)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    made = dotenv(out.read_text())
    assert made.keys() == example.keys() and not any("CHANGE-ME" in v for v in made.values())
    assert re.fullmatch(r"[A-Za-z0-9]{32}", made["POSTGRES_PASSWORD"]) and made["TRANSFEROPS_UID"] == example["TRANSFEROPS_UID"]
    assert (out.stat().st_mode & 0o777) == 0o600
    assert _preflight(made).returncode == 0
    again = subprocess.run(run, capture_output=True, text=True)  # never overwrites secrets silently
    assert again.returncode == 1 and "--force" in again.stderr and dotenv(out.read_text()) == made
    assert subprocess.run([*run, "--force"], capture_output=True).returncode == 0 and dotenv(out.read_text()) != made


def dotenv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#") and "=" in line)
