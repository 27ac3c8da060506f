"""Held-out slices beyond the run's own test split, for a model trained on newer data.

A retrain after drift trains on a data version that adds production-like images to the data
the champion saw. Its own test split mixes both, so a challenger can win on it while getting
worse on what the champion did well. Two more slices make that visible:

- ``previous_test``: the test split of the champion's data version, exactly as the champion
  was scored on it (same split rule; both models are scored on it here, by the same code);
- ``new_test``: the images of this run's test split that the champion's data version did not
  hold (the drifted, production-like data), matched by label and content hash, so an image
  whose file was replaced counts as new.

Splits are a hash of class and file name (:func:`transferops.data.hash_split`), so an image of
the previous test split kept in the new version is a test image there too: neither slice
leaks training images of the challenger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from transferops.data import ImageRecord, ImageSet, read_bytes

PREVIOUS_TEST, NEW_TEST = "previous_test", "new_test"


@dataclass(frozen=True)
class EvaluationSlice:
    """One extra held-out slice: a name, its images (all in split ``test``) and what it is."""

    name: str
    images: ImageSet
    description: str

    @property
    def size(self) -> int:
        """Images in the slice."""
        return len(self.images.records)


def _content_key(record: ImageRecord) -> tuple[str, str]:
    return record.label, hashlib.sha256(read_bytes(record)).hexdigest()


def evaluation_slices(current: ImageSet, previous: ImageSet, previous_rev: str) -> tuple[list[EvaluationSlice], str]:
    """The ``previous_test`` and ``new_test`` slices of ``current`` against ``previous`` (the
    champion's data version ``previous_rev``), and a note; no slices (note says why) when the two
    versions have different classes. An empty slice is left out and named in the note."""
    short = previous_rev[:12]
    if previous.classes != current.classes:
        return [], (f"no previous-data slices: the champion's data ({short}) has classes {previous.classes}, "
                    f"this version {current.classes}")
    before = {_content_key(r) for r in previous.records}
    new = [r for r in current.split("test") if _content_key(r) not in before]
    candidates = [
        EvaluationSlice(PREVIOUS_TEST, ImageSet(previous.root, [replace(r, split="test") for r in previous.split("test")],
                                                 list(previous.classes)),
                        f"the test split of the champion's data version {short}"),
        EvaluationSlice(NEW_TEST, ImageSet(current.root, new, list(current.classes)),
                        f"test images of this version that {short} did not hold"),
    ]
    kept = [c for c in candidates if c.size]
    empty = [c.name for c in candidates if not c.size]
    note = ", ".join(f"{c.name}: {c.size} images ({c.description})" for c in kept)
    if empty:
        note += ("; " if note else "") + f"empty, so not scored: {', '.join(empty)}"
    return kept, note


def slice_metrics(slices: dict[str, dict]) -> dict[str, float]:
    """``<slice>_<metric>`` for the challenger and ``<slice>_champion_<metric>`` for the champion."""
    out: dict[str, float] = {}
    for name, res in slices.items():
        out |= {f"{name}_{k}": v for k, v in res["challenger"].items()}
        out |= {f"{name}_champion_{k}": v for k, v in (res["champion"] or {}).items()}
    return out


def describe_slices(slices: dict[str, dict]) -> str:
    """One line per run: each slice's size and both models' accuracy."""
    def one(name: str, res: dict) -> str:
        champ = f", champion {res['champion']['accuracy']:.3f}" if res["champion"] else ""
        return f"{name} ({res['images']} images): challenger {res['challenger']['accuracy']:.3f}{champ}"
    return "; ".join(one(n, r) for n, r in slices.items())
