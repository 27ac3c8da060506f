"""Offline defaults: telemetry off for every tool the project drives.

Each tool phones home unless told not to, and the project's machines have no
network beyond package registries, so an attempt costs a timeout at best.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # A fresh Prefect database needs ~30 s of migrations on 2 cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # Progress belongs to transferops' own rich bars, not one per artifact download.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Pretrained weights come from a local file or the torch cache, never a download.
    "HF_HUB_OFFLINE": "1",
    # An MLflow 3.17 server that proxies an S3 store advertises presigned downloads: the client
    # then fetches every artifact from the S3 endpoint the *server* uses (http://minio:9000 in
    # infra/), which a laptop outside the compose network cannot resolve. Through the server.
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
}


def apply_offline_defaults() -> None:
    """Set the telemetry-off defaults without overriding what the user exported."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
