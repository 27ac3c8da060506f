"""infra/ cannot be brought up here (no container engine), so its files are checked as data:
the compose file parses, every image is pinned to a release, every service reports its
health, and every variable it reads is documented in .env.example or has a default."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
ONE_SHOT = {"minio-init"}  # runs once and exits: `service_completed_successfully` is its health


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
