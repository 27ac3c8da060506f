"""The data flow: validate incoming images, then make them a new dataset version.

Wiring only: the steps are in ``tasks/ingest.py``; here they run as Prefect tasks (with
retries on the DVC push and the project set-up). ``transferops data add`` runs the same
steps without Prefect (``tasks.ingest.add_data_direct``); ``--orchestrate`` runs this flow.
"""

from __future__ import annotations

import sys

from prefect import flow

from tasks import validation, versioning
from tasks.ingest import DataParams, IngestSteps, add_data_direct, ingest  # noqa: F401  (add_data_direct: re-exported)

TASK_STEPS = IngestSteps(prepare_project=versioning.prepare_project, load_dataset=validation.load_dataset,
                         validate_dataset=validation.validate_dataset, add_version=versioning.add_version,
                         push_version=versioning.push_version)


@flow(name="transferops-data", log_prints=True)
def add_data(params: DataParams) -> dict:
    """Validate ``params.source`` and commit it as a new version of ``params.target``; returns the version."""
    return ingest(params, TASK_STEPS)


if __name__ == "__main__":
    add_data(DataParams(source=sys.argv[1]))
