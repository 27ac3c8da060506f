"""The promotion decision: a pure function of metrics and a policy.

The registry adapter (``tasks/registry.py``) only carries the decision out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from transferops.config import ConfigError, PromotionConfig


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger becomes champion, and why."""

    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
                     policy: PromotionConfig) -> PromotionDecision:
    """Promote when there is no champion, or the challenger beats it by more than the margin.

    Both metric sets must come from the same held-out data; ties keep the champion.

    >>> decide_promotion({"accuracy": 0.9}, {"accuracy": 0.8}, PromotionConfig()).promote
    True
    """
    m = policy.metric
    if m not in challenger:
        raise ConfigError(f"challenger metrics lack '{m}' (have {', '.join(challenger)}); set promotion.metric to one of them")
    new = float(challenger[m])
    if champion is None:
        return PromotionDecision(True, f"no champion yet: the challenger ({m}={new:.4f}) becomes champion", m, new, None)
    if m not in champion:
        return PromotionDecision(False, f"the champion has no '{m}' on this held-out data; champion kept, promote by hand", m, new, None)
    old = float(champion[m])
    if new > old + policy.min_improvement:
        return PromotionDecision(True, f"challenger {m}={new:.4f} beats champion {old:.4f} by more than {policy.min_improvement:g}", m, new, old)
    return PromotionDecision(False, f"challenger {m}={new:.4f} does not beat champion {old:.4f} by more than {policy.min_improvement:g}; champion kept", m, new, old)
