"""What every registered version records about how it was made, as MLflow tags.

One typed record for source and target models alike, so the flows, ``status``, ``lineage``
and the data checks read the same names (``transferops.<field>``). The fields added with
issue 12 (held-out data, source weights hash, drift against the previous training data, the
Prefect flow run) have defaults and are tagged only when known, so a version registered
before them reads back with those fields absent (``transferops lineage``: "not recorded").
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.models import Bundle

PREFIX = "transferops."
# MLflow caps a model-version tag value at 5,000 characters.
MAX_TAG = 5000
# What the promotion's lineage gate requires: without them a version cannot be rebuilt or traced.
REQUIRED = ("data_rev", "data_md5", "heldout_rev", "source", "source_weights_sha256", "strategy", "git_sha")
# The held-out set is the test split stored in the data version's index: assigned once, at
# ingest, by an unseeded hash of the image's class and path (transferops.data.hash_split).
SPLIT_RULE = "test split of the data version's index (assigned at ingest: sha1 of '<class>/<path>', no seed)"


@dataclass(frozen=True)
class Lineage:
    """The data, code, source and decisions behind one model version."""

    role: str  # "target" (the served classifier) or "source"
    data_rev: str  # git revision of the <target>.dvc file
    data_md5: str  # DVC hash of the data version
    backbone: str
    source: str  # the source spec the run started from, as given (models:/NAME@ALIAS stays an alias)
    strategy: str
    strategy_reason: str
    git_sha: str  # the transferops code
    test_accuracy: float
    classes: tuple[str, ...]
    similarity: float | None = None  # to the source domain; None when not measured
    drift_p_val: float | None = None
    drift_note: str = ""  # why similarity and p-value are missing, when they are
    strategy_params: dict[str, Any] | None = None  # k, learning rates, L2-SP... as the strategy trained
    trigger: dict[str, Any] | None = None  # what started a retrain: event id, monitor run, statistics
    heldout_rev: str = ""  # git revision of the data version whose test split scored the model
    heldout_split: dict[str, Any] | None = None  # how that split is drawn and what it holds (held_out)
    source_weights_sha256: str = ""  # of the weights file the run started from
    previous_drift: dict[str, Any] | None = None  # the train split against the champion's training data, or why not
    prefect_flow_run_id: str = ""
    source_version: str = ""  # the exact source: models:/NAME/N for a registry one (an alias as it resolved), else the spec

    def missing(self) -> list[str]:
        """The fields a version cannot be traced or rebuilt without (data, held-out data, source
        and its weights, strategy, code) that are unknown.

        >>> Lineage("target", "abc", "", "resnet18", "s", "lp_ft", "", "unknown", 0.9, ("a",)).missing()
        ['data_md5', 'heldout_rev', 'source_weights_sha256', 'git_sha']
        """
        return [k for k in REQUIRED if not getattr(self, k) or getattr(self, k) == "unknown"]

    def tags(self) -> dict[str, str]:
        """The tags of the registered version (values within MLflow's limit).

        >>> t = Lineage("target", "abc", "9f.dir", "resnet18", "s", "lp_ft", "", "1a2b", 0.9, ("a",),
        ...             heldout_rev="abc", prefect_flow_run_id="f-1").tags()
        >>> t["transferops.heldout_rev"], t["transferops.prefect_flow_run_id"], "transferops.previous_drift" in t
        ('abc', 'f-1', False)
        """
        na = f"n/a ({self.drift_note})" if self.drift_note else "n/a"
        tags = {
            "role": self.role, "data_rev": self.data_rev, "data_md5": self.data_md5, "backbone": self.backbone,
            "source": self.source, "strategy": self.strategy, "strategy_reason": self.strategy_reason,
            "git_sha": self.git_sha, "test_accuracy": f"{self.test_accuracy:.6f}",
            "classes": json.dumps(list(self.classes)),
            "source_similarity": f"{self.similarity:.6f}" if self.similarity is not None else na,
            "drift_p_val": f"{self.drift_p_val:.6f}" if self.drift_p_val is not None else na,
            "strategy_params": json.dumps(self.strategy_params or {}, sort_keys=True, default=str),
        }
        if self.trigger:
            tags["trigger"] = json.dumps(self.trigger, sort_keys=True, default=str)
        # the issue-12 fields only when known: an absent tag reads back as "not recorded"
        for key in ("heldout_rev", "source_weights_sha256", "prefect_flow_run_id", "source_version"):
            if getattr(self, key):
                tags[key] = getattr(self, key)
        for key in ("heldout_split", "previous_drift"):
            if getattr(self, key) is not None:
                tags[key] = json.dumps(getattr(self, key), sort_keys=True, default=str)
        # the class list stays whole: a cut JSON list would be unreadable (data checks parse it)
        return {PREFIX + k: v if k == "classes" else v[:MAX_TAG] for k, v in tags.items()}

    @staticmethod
    def held_out(images: "ImageSet", val_fraction: float, test_fraction: float) -> dict[str, Any]:
        """The ``heldout_split`` record: the rule that drew the test split, the run's fractions (they
        drew it when the run ingested the data; an older version keeps the split of its own ingest),
        the counts and a fingerprint of the test images (class and path), so a rebuilt held-out set
        can be checked.

        >>> from pathlib import Path
        >>> from transferops.data import ImageRecord, ImageSet
        >>> ds = ImageSet(Path("/d"), [ImageRecord("/d/a/1.png", "a", "test"), ImageRecord("/d/a/2.png", "a", "train")], ["a"])
        >>> h = Lineage.held_out(ds, 0.15, 0.15)
        >>> h["counts"], len(h["test_sha256"])
        ({'train': 1, 'val': 0, 'test': 1}, 64)
        """
        test = sorted((os.path.relpath(str(r.path), str(images.root)), r.label) for r in images.split("test"))
        return {"split": "test", "rule": SPLIT_RULE, "val_fraction": val_fraction, "test_fraction": test_fraction,
                "counts": {s: len(images.split(s)) for s in ("train", "val", "test")},
                "test_sha256": hashlib.sha256(json.dumps(test).encode()).hexdigest()}


def weights_file(url: str) -> Path:
    """Where the weights named by a torchvision ``Weights.url`` lie on this machine: a local file as
    it is, a download URL as its copy in the torch cache (where ``models.load_state_dict`` reads it)."""
    if url.startswith(("http://", "https://")):
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return Path(url)


def weights_sha256(url: str) -> str | None:
    """sha256 of the weights file ``url`` names (see :func:`weights_file`), or None when there is
    no such file (an untrained source)."""
    path = weights_file(url)
    if not path.is_file():
        return None
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


# A backbone's weights are tens to hundreds of MB: a process that trains from the same source
# again (the retrain loop) hashes them once; size and mtime in the key catch a replaced file.
@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def drift_from_previous(settings: "Settings", bundle: "Bundle | None", version: str | None,
                        images: "ImageSet") -> dict[str, Any]:
    """The ``previous_drift`` record: MMD of ``images``' train split against the training profile of
    the champion ``bundle`` (version ``version``), both embedded by the champion's own network, as
    the monitor compares production batches; or a ``note`` saying why it was not measured."""
    if bundle is None:
        return {"note": "no champion yet: there is no previous training data"}
    against = {"against_version": version, "against_data_rev": (bundle.meta.get("lineage") or {}).get(PREFIX + "data_rev")}
    if bundle.profile_path is None:
        return against | {"note": f"champion v{version} has no training profile (trained before profiles were stored)"}
    from transferops.drift.base import DriftInputError
    from transferops.drift.mmd import MMDDrift
    from transferops.drift.profile import Profile, build_profile
    from transferops.models import model_from_bundle
    from transferops.training import resolve_device

    cfg = settings.drift
    try:
        reference = Profile.load(bundle.profile_path)
        new = build_profile(model_from_bundle(bundle), images.split("train"), images.class_to_idx, bundle.weights,
                            size=cfg.max_samples, batch_size=settings.training.batch_size,
                            device=resolve_device(settings.training.device))
        res = MMDDrift(reference.embeddings, p_val=cfg.alpha, n_permutations=cfg.n_permutations,
                       n_components=cfg.n_components, shrinkage=cfg.shrinkage, max_samples=cfg.max_samples,
                       seed=cfg.seed).predict(new.embeddings)
    except DriftInputError as exc:  # too few images, or a damaged profile: the version is still traceable
        return against | {"note": f"not measured: {exc}"}
    return against | {"test": res.test, "is_drift": res.is_drift, "p_val": res.p_val, "threshold": res.threshold,
                      "distance": res.distance, "n_ref": res.n_ref, "n_test": res.n_test}


def read_tags(tags: dict[str, str]) -> dict[str, Any]:
    """A version's lineage read back from its tags: each field parsed (JSON as objects, numbers as
    floats), None where the version does not record it (one registered before the field existed).

    >>> r = read_tags({"transferops.data_rev": "abc", "transferops.drift_p_val": "n/a (no profile)",
    ...                "transferops.strategy_params": '{"lr": 0.001}', "transferops.gate.metric": "pass 0.1 >= 0"})
    >>> r["data_rev"], r["heldout_rev"], r["strategy_params"], r["drift_vs_source"], r["gates"]
    ('abc', None, {'lr': 0.001}, {'similarity': None, 'p_val': None, 'note': 'n/a (no profile)'}, {'metric': 'pass 0.1 >= 0'})
    """
    def get(key: str) -> str | None:
        value = tags.get(PREFIX + key)
        return value if value not in (None, "") else None

    def parsed(key: str) -> Any:
        value = get(key)
        try:
            return json.loads(value) if value is not None else None
        except ValueError:  # cut at MLflow's limit: the text is all there is
            return value

    def number(key: str) -> float | None:
        try:
            return float(get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    notes = {get(k) for k in ("source_similarity", "drift_p_val") if get(k) and number(k) is None}
    return {
        "role": get("role"), "data_rev": get("data_rev"), "data_md5": get("data_md5"),
        "heldout_rev": get("heldout_rev"), "heldout_split": parsed("heldout_split"),
        "source": get("source"), "source_version": get("source_version"), "backbone": get("backbone"),
        "source_weights_sha256": get("source_weights_sha256"),
        "strategy": get("strategy"), "strategy_params": parsed("strategy_params"), "strategy_reason": get("strategy_reason"),
        "drift_vs_source": None if get("source_similarity") is None and get("drift_p_val") is None else
        {"similarity": number("source_similarity"), "p_val": number("drift_p_val"), "note": "; ".join(sorted(notes))},
        "drift_vs_previous": parsed("previous_drift"),
        "git_sha": get("git_sha"), "prefect_flow_run_id": get("prefect_flow_run_id"), "trigger": parsed("trigger"),
        "gates": {k[len(PREFIX + "gate."):]: v for k, v in sorted(tags.items()) if k.startswith(PREFIX + "gate.")} or None,
        "promotion": get("promotion"), "test_accuracy": number("test_accuracy"), "classes": parsed("classes"),
    }
