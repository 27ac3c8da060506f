"""Prefect tasks: small wrappers of the core and the only adapters to DVC, MLflow and GX."""

from transferops.offline import apply_offline_defaults

apply_offline_defaults()
