"""What every registered version records about how it was made, as MLflow tags.

One typed record for source and target models alike, so the flows, ``status`` and the
data checks read the same names (``transferops.<field>``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PREFIX = "transferops."
# MLflow caps a model-version tag value at 5,000 characters.
MAX_TAG = 5000
# What the promotion's lineage gate requires: without them a version cannot be rebuilt or traced.
REQUIRED = ("data_rev", "data_md5", "source", "strategy", "git_sha")


@dataclass(frozen=True)
class Lineage:
    """The data, code, source and decisions behind one model version."""

    role: str  # "target" (the served classifier) or "source"
    data_rev: str  # git revision of the <target>.dvc file
    data_md5: str  # DVC hash of the data version
    backbone: str
    source: str  # the source spec the run started from
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

    def missing(self) -> list[str]:
        """The fields a version cannot be traced without (data, source, strategy, code) that are unknown.

        >>> Lineage("target", "abc", "", "resnet18", "s", "lp_ft", "", "unknown", 0.9, ("a",)).missing()
        ['data_md5', 'git_sha']
        """
        return [k for k in REQUIRED if not getattr(self, k) or getattr(self, k) == "unknown"]

    def tags(self) -> dict[str, str]:
        """The tags of the registered version (values within MLflow's limit)."""
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
        # the class list stays whole: a cut JSON list would be unreadable (data checks parse it)
        return {PREFIX + k: v if k == "classes" else v[:MAX_TAG] for k, v in tags.items()}
