"""Prefect flows: wiring only. Entry points: ``flows/<name>.py:<flow>`` (see prefect.yaml).

The offline defaults go first: Prefect reads DO_NOT_TRACK when it is imported.
"""

from transferops.offline import apply_offline_defaults

apply_offline_defaults()
