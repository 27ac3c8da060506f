"""Opening a source spec, fetching a registered model's bundle first: a plain function, no Prefect.

The core parses the spec and opens the folder (``transferops.sources``); this adapter adds
the one IO step between them, the MLflow download. ``tasks/modeling.py`` wraps it as a
task with a retry; the CLI calls it as it is.
"""

from __future__ import annotations

from dataclasses import replace

from transferops.config import Settings
from transferops.sources import SourceModel, parse_source
from transferops.sources import open_source as open_ref


def open_source(settings: Settings, source: str, backbone: str | None = None,
                profile: str | None = None) -> SourceModel:
    """Open ``source`` (``models:/NAME@ALIAS``, ``BACKBONE:WEIGHTS``, a bundle folder, or a
    state-dict file with ``backbone``); an explicit ``profile`` (.npz) overrides the bundle's.
    A registry source's ``version_uri`` names the version it was fetched as (an alias resolved now)."""
    ref = parse_source(source, backbone)
    if ref.kind != "registry":
        return open_ref(ref, None, profile)
    from tasks import registry  # MLflow loads only for registered sources

    # an alias moves: pin it to the version it names now, so lineage can name what was used
    name, alias, version = registry.parse_model_uri(source)
    if alias:
        held = registry.alias_version(settings, name, alias)
        version = held.version if held else None
    pinned = f"models:/{name}/{version}" if version else source  # no such alias: fetch_bundle says so
    folder = registry.fetch_bundle(settings, pinned, settings.state_dir / "sources" / parse_source(pinned).cache_key)
    return replace(open_ref(ref, folder, profile), version_uri=pinned)
