"""Prefect tasks over the git + DVC adapter (``tasks/dvcstore.py``).

The adapter's IO steps become tasks here, with retries on the network-facing ones
(push, checkout, project set-up); everything else is re-exported unchanged.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import dvcstore
from tasks.dvcstore import (GITIGNORE, DataVersion, VersioningError, code_git_sha, current_version,  # noqa: F401
                            ensure_project, git, git_head, list_versions, read_dvc_file, store_table)

add_version = task(cache_policy=NO_CACHE)(dvcstore.add_version)
# a production batch from the project or a data registry: cache, else the remote
fetch_tracked = task(retries=2, retry_delay_seconds=2)(dvcstore.fetch_tracked)
push_version = task(retries=2, retry_delay_seconds=2)(dvcstore.push_version)
checkout_version = task(retries=2, retry_delay_seconds=2)(dvcstore.checkout_version)
prepare_project = task(retries=2, retry_delay_seconds=2)(dvcstore.prepare_project)
