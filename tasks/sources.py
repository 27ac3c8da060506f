"""Opening a source spec, fetching a registered model's bundle first: a plain function, no Prefect.

The core parses the spec and opens the folder (``transferops.sources``); this adapter adds
the one IO step between them, the MLflow download. ``tasks/modeling.py`` wraps it as a
task with a retry; the CLI calls it as it is.
"""

from __future__ import annotations

from transferops.config import Settings
from transferops.sources import SourceModel, open_source as open_ref, parse_source


def open_source(settings: Settings, source: str, backbone: str | None = None,
                profile: str | None = None) -> SourceModel:
    """Open ``source`` (``models:/NAME@ALIAS``, ``BACKBONE:WEIGHTS``, a bundle folder, or a
    state-dict file with ``backbone``); an explicit ``profile`` (.npz) overrides the bundle's."""
    ref = parse_source(source, backbone)
    folder = None
    if ref.kind == "registry":
        from tasks import registry  # MLflow loads only for registered sources

        folder = registry.fetch_bundle(settings, source, settings.state_dir / "sources" / ref.cache_key)
    return open_ref(ref, folder, profile)
