"""The promotion decision: a pure function of evidence and a policy.

The challenger and the champion are scored by the same code
(:func:`transferops.training.evaluate`) on the same held-out split in the same run; the
decision reads those two metric sets, the challenger's measured latency and whether its data
was validated and its lineage is complete, and runs every gate of the policy
(:class:`transferops.config.PromotionConfig`):

==============  =========================================================  ==================
gate            passes when                                                threshold
==============  =========================================================  ==================
``metric``      challenger - champion >= ``min_delta``, and not a tie      ``min_delta``
``class_drop``  no class's recall falls by more than ``max_class_drop``    ``max_class_drop``
``ece``         expected calibration error <= ``max_ece``                  ``max_ece``
``latency``     median batch-1 latency <= ``max_latency_ms``               ``max_latency_ms``
``validation``  the data was validated in this run                         --
``lineage``     data_rev, data_md5, source, strategy and git_sha are known  --
==============  =========================================================  ==================

A gate with no threshold (None), or with nothing to compare (no champion yet, a champion
scored without per-class recall), is *skipped* with a note and does not block. Every gate is
reported, passed or not, so the table says everything that held a version back at once.
With ``require_approval`` a version that passes every gate is not promoted but waits for
``transferops promote VERSION --reason TEXT``. The registry adapter only carries the decision out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from transferops.config import ConfigError, PromotionConfig
from transferops.lineage import REQUIRED as LINEAGE_REQUIRED

# Metric sets of the same images are exact ratios of counts; differences this small are float noise.
_EPS = 1e-9


@dataclass(frozen=True)
class GateVerdict:
    """One gate's outcome: its number, the threshold it was held to, and why, in words."""

    name: str
    passed: bool  # a skipped gate passes: it blocks nothing
    value: float | str | None
    threshold: float | None
    note: str
    op: str = ""  # how value is held to threshold: ">=" or "<="
    skipped: bool = False

    @property
    def verdict(self) -> str:
        return "skip" if self.skipped else "pass" if self.passed else "fail"

    def tag(self) -> str:
        """The short form for a version tag: ``pass 0.0300 >= 0.0000``, ``fail: <note>``."""
        if self.threshold is not None and isinstance(self.value, (int, float)):
            text = f"{self.verdict} {_num(self.value)} {self.op} {_num(self.threshold)}"
        else:
            text = f"{self.verdict}: {self.note}"
        return text[:250]


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger becomes champion, and why; each gate's verdict in ``gates``."""

    promote: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    gates: tuple[GateVerdict, ...] = field(default=())
    awaiting_approval: bool = False  # every gate passed; the policy wants a person to say yes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failed(self) -> list[GateVerdict]:
        return [g for g in self.gates if not g.passed]

    @property
    def outcome(self) -> str:
        return "promote" if self.promote else "awaiting_approval" if self.awaiting_approval else "keep_champion"

    def tags(self) -> dict[str, str]:
        """The registered version's tags: ``transferops.gate.<name>`` (``pass 0.0300 >= 0.0000``) per
        gate and ``transferops.promotion`` (promote, awaiting_approval or keep_champion)."""
        return {f"transferops.gate.{g.name}": g.tag() for g in self.gates} | {"transferops.promotion": self.outcome}


def decide_promotion(challenger: Mapping[str, Any], champion: Mapping[str, Any] | None, policy: PromotionConfig, *,
                     validation_ok: bool = True, lineage_missing: Sequence[str] = (), latency_ms: float | None = None,
                     version: str | None = None) -> PromotionDecision:
    """Run every gate of ``policy`` on the challenger's metrics against the champion's (None: there is none).

    Both metric sets must come from the same held-out data. ``validation_ok``: the data was
    validated in this run; ``lineage_missing``: the lineage fields that are unknown;
    ``latency_ms``: the challenger's median batch-1 latency (None: not measured);
    ``version``: the challenger's version number, for the approval command in the reason.

    >>> decide_promotion({"accuracy": 0.9}, {"accuracy": 0.8}, PromotionConfig()).promote
    True
    >>> d = decide_promotion({"accuracy": 0.9}, {"accuracy": 0.9}, PromotionConfig())
    >>> d.promote, d.gates[0].tag()
    (False, 'fail 0.0000 >= 0.0000')
    """
    m = policy.metric
    if m not in challenger:
        raise ConfigError(f"challenger metrics lack '{m}' (have {', '.join(challenger)}); set promotion.metric to one of them")
    new = float(challenger[m])
    old = float(champion[m]) if champion is not None and m in champion else None
    gates = (_metric_gate(m, new, old, champion, policy), _class_drop_gate(challenger, champion, policy),
             _ece_gate(challenger, policy), _latency_gate(latency_ms, policy),
             GateVerdict("validation", validation_ok, "validated" if validation_ok else "not validated", None,
                         "the data passed validation in this run" if validation_ok
                         else "the data was not validated in this run"),
             GateVerdict("lineage", not lineage_missing, "complete" if not lineage_missing else "incomplete", None,
                         f"{', '.join(LINEAGE_REQUIRED)} recorded" if not lineage_missing
                         else f"unknown: {', '.join(lineage_missing)}"))
    failed = [g for g in gates if not g.passed]
    if failed:
        why = "; ".join(f"{g.name}: {g.note}" for g in failed)
        head = "no champion yet, but the challenger fails" if champion is None else "champion kept"
        return PromotionDecision(False, f"{head} ({why})", m, new, old, gates)
    if champion is None:
        reason = f"no champion yet: the challenger ({m}={new:.4f}) becomes champion"
    else:
        reason = f"challenger {m}={new:.4f} beats champion {old:.4f} by at least {policy.min_delta:g}, and every gate passes"
    if policy.require_approval:
        return PromotionDecision(False, f"{reason.replace('becomes champion', 'may become champion')}; the policy requires "
                                 f"approval: transferops promote {version or 'VERSION'} --reason TEXT", m, new, old, gates,
                                 awaiting_approval=True)
    return PromotionDecision(True, reason, m, new, old, gates)


def _metric_gate(m: str, new: float, old: float | None, champion: Mapping[str, Any] | None,
                 policy: PromotionConfig) -> GateVerdict:
    if champion is None:
        return GateVerdict("metric", True, new, None, f"no champion yet ({m}={new:.4f})", skipped=True)
    if old is None:
        return GateVerdict("metric", False, new, policy.min_delta,
                           f"the champion has no '{m}' on this held-out data; promote by hand")
    delta = new - old
    if abs(delta) <= _EPS:
        return GateVerdict("metric", False, 0.0, policy.min_delta, f"{m} {new:.4f} ties the champion; a tie keeps it", ">=")
    ok = delta > _EPS and delta >= policy.min_delta - _EPS
    return GateVerdict("metric", ok, delta, policy.min_delta,
                       f"{m} {new:.4f} vs champion {old:.4f} ({delta:+.4f}, at least {policy.min_delta:g} needed)", ">=")


def _class_drop_gate(challenger: Mapping[str, Any], champion: Mapping[str, Any] | None,
                     policy: PromotionConfig) -> GateVerdict:
    limit = policy.max_class_drop
    if limit is None:
        return GateVerdict("class_drop", True, None, None, "off (max_class_drop is null)", skipped=True)
    if champion is None:
        return GateVerdict("class_drop", True, None, limit, "no champion to compare with", "<=", skipped=True)
    old, new = champion.get("per_class_recall"), challenger.get("per_class_recall")
    if not old:
        return GateVerdict("class_drop", True, None, limit, "the champion has no per-class recall on this data",
                           "<=", skipped=True)
    if not new:
        return GateVerdict("class_drop", False, None, limit, "the challenger has no per-class recall", "<=")
    # a recall over a handful of images moves in steps of 1/n: judge only classes with enough of them
    support = _class_support(challenger)
    few = [c for c in new if support.get(c, policy.min_class_images) < policy.min_class_images]
    drops = {c: old[c] - new[c] for c in old if old[c] is not None and new.get(c) is not None and c not in few}
    skipped_note = (f"; {len(few)} class(es) with fewer than {policy.min_class_images} test images not judged"
                    if few else "")
    if not drops:
        return GateVerdict("class_drop", True, None, limit, f"no class to judge{skipped_note}", "<=", skipped=True)
    worst = max(drops, key=lambda c: drops[c])
    drop = drops[worst]
    note = f"largest recall drop: class '{worst}' {old[worst]:.3f} -> {new[worst]:.3f}{skipped_note}"
    return GateVerdict("class_drop", drop <= limit + _EPS, round(drop, 6), limit, note, "<=")


def _class_support(metrics: Mapping[str, Any]) -> dict[str, int]:
    """Test images per class (the confusion matrix's row sums, in ``per_class_recall``'s order)."""
    names, rows = list(metrics.get("per_class_recall") or {}), metrics.get("confusion")
    if not rows or len(rows) != len(names):
        return {}
    return {c: int(sum(r)) for c, r in zip(names, rows)}


def _ece_gate(challenger: Mapping[str, Any], policy: PromotionConfig) -> GateVerdict:
    ece = challenger.get("ece")
    if policy.max_ece is None:
        note = "off (max_ece is null)" + (f"; ECE {ece:.4f}" if ece is not None else "")
        return GateVerdict("ece", True, ece, None, note, skipped=True)
    if ece is None:
        return GateVerdict("ece", False, None, policy.max_ece, "the challenger has no ECE", "<=")
    return GateVerdict("ece", ece <= policy.max_ece + _EPS, ece, policy.max_ece,
                       f"expected calibration error {ece:.4f} (at most {policy.max_ece:g})", "<=")


def _latency_gate(latency_ms: float | None, policy: PromotionConfig) -> GateVerdict:
    limit = policy.max_latency_ms
    if limit is None:
        note = "off (max_latency_ms is null)" + (f"; {latency_ms:.2f} ms" if latency_ms is not None else "")
        return GateVerdict("latency", True, latency_ms, None, note, skipped=True)
    if latency_ms is None:
        return GateVerdict("latency", False, None, limit, "latency was not measured (promotion.latency_repeats is 0?)", "<=")
    return GateVerdict("latency", latency_ms <= limit, latency_ms, limit,
                       f"median batch-1 latency {latency_ms:.2f} ms (at most {limit:g} ms)", "<=")


def _num(x: float) -> str:
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:.0f}"


def gate_table(decision: PromotionDecision) -> str:
    """The gates as a Markdown table, with the decision's reason under it.

    >>> print(gate_table(decide_promotion({"accuracy": 0.9}, None, PromotionConfig())).splitlines()[2])
    | metric | skip | 0.9000 |  | no champion yet (accuracy=0.9000) |
    """
    def cell(v: Any) -> str:
        text = _num(v) if isinstance(v, float) else "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| gate | verdict | value | threshold | note |", "|---|---|---|---|---|"]
    rows += [f"| {g.name} | {g.verdict} | {cell(g.value)} | {(g.op + ' ' + cell(g.threshold)).strip() if g.threshold is not None else ''}"
             f" | {cell(g.note)} |" for g in decision.gates]
    return "\n".join(rows) + f"\n\n**Decision: {decision.outcome}.** {decision.reason}\n"
