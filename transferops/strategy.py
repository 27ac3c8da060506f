"""Reuse strategies by name, and the ``auto`` rule that picks one from measured evidence.

The classic four cases of transfer learning (Yosinski et al. 2014; the CS231n notes), read
with *measured* similarity: "similar" means the source features already describe the
target, which a cross-validated linear probe on them measures directly (how accurate a
linear classifier on the frozen features is), not how far apart the two image
distributions are (a domain classifier tells every target with new classes apart from the
source, so it cannot say "similar"; it stays a drift statistic).

=============  ==============================  ==========================================
size           source features fit              source features do not fit
=============  ==============================  ==========================================
small          ``feature_extraction``           ``full_finetune`` (discriminative rates)
large          ``full_finetune``                ``scratch`` (or ``full_finetune``)
=============  ==============================  ==========================================

``full_finetune`` replaces the classic ``partial_finetune`` in the small/different cell:
with enough optimizer steps, augmentation and learning rates that fall block by block
towards the input, every layer adapts without forgetting, and on the Fashion-MNIST strategy
benchmark it beat ``partial_finetune`` and ``lp_ft`` there (``bench/strategies``). The cells
are configurable (``strategy.*`` settings). This
module is light to import (the CLI and the flows' parameter models read the names); the
strategy objects that train are in :mod:`transferops.strategies`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from transferops.errors import InputError

if TYPE_CHECKING:
    from transferops.config import Settings

STRATEGIES = ("feature_extraction", "partial_finetune", "full_finetune", "lp_ft", "scratch")
CHOICES = ("auto", "search", *STRATEGIES)  # what a user may ask for
PRETRAINED = frozenset(STRATEGIES) - {"scratch"}


@dataclass(frozen=True)
class Evidence:
    """What the ``auto`` rule reads; every field is measured on the target's train (+val) images."""

    per_class: float  # train images per class
    n_classes: int
    probe_accuracy: float | None = None  # cross-validated linear probe on the source features
    chance: float | None = None  # the probe's floor: always the most frequent class
    logme: float | None = None  # LogME of the source features (You et al. 2021), logged beside the probe
    shift_p_val: float | None = None  # input shift against the source profile (the drift stage's decision test)
    shift_test: str | None = None
    similarity: float | None = None  # the domain-classifier statistic, a drift figure, not a decision input
    budget: str = "normal"

    @property
    def transferability(self) -> float | None:
        """The probe's accuracy rescaled so chance is 0 and perfect is 1."""
        if self.probe_accuracy is None or self.chance is None:
            return None
        return max(0.0, (self.probe_accuracy - self.chance) / max(1e-9, 1 - self.chance))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"transferability": self.transferability}


@dataclass(frozen=True)
class StrategyChoice:
    """A chosen strategy, its parameters and the plain-language reason."""

    name: str
    reason: str
    params: dict[str, Any] = field(default_factory=dict)  # freeze_blocks, lr, backbone_lr_mult, layer_decay, l2sp, ...
    evidence: dict[str, Any] = field(default_factory=dict)
    selection_seconds: float = 0.0  # measuring the evidence (or the search) cost this much
    leaderboard: list[dict[str, Any]] | None = None  # --strategy search: every candidate's rungs

    @property
    def pretrained(self) -> bool:
        return self.name in PRETRAINED

    @property
    def freeze_blocks(self) -> int | None:
        """Backbone blocks kept frozen while fine-tuning; None: all of them."""
        return self.params.get("freeze_blocks")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def strategy_params(name: str, settings: "Settings", *, freeze_blocks: int | None = None) -> dict[str, Any]:
    """The learning rates and freezing a strategy trains with, from the settings.

    Pretrained blocks train at ``backbone_lr_mult`` times the head's rate: a random head
    needs large steps, the source features small ones. ``full_finetune`` also lowers the
    rate block by block towards the input (``layer_decay``) and may pull the weights
    towards the source (``l2sp``). ``scratch`` trains everything at the head's rate.
    """
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy '{name}'; choose one of: {', '.join(CHOICES)}")
    t = settings.training
    base: dict[str, Any] = {"lr": t.lr, "weight_decay": t.weight_decay}
    if name == "feature_extraction":
        return base | {"freeze_blocks": None, "cache": settings.strategy.cache_features}
    if name == "partial_finetune":
        return base | {"freeze_blocks": freeze_blocks, "backbone_lr_mult": t.backbone_lr_mult}
    if name == "full_finetune":
        return base | {"freeze_blocks": 0, "backbone_lr_mult": t.backbone_lr_mult, "layer_decay": t.layer_decay,
                       "l2sp": t.l2sp}
    if name == "lp_ft":
        return base | {"freeze_blocks": 0, "backbone_lr_mult": t.backbone_lr_mult, "ft_lr_mult": t.lp_ft_lr_mult,
                       "l2sp": t.l2sp}
    return base | {"freeze_blocks": 0, "backbone_lr_mult": 1.0}


def describe(name: str, params: dict[str, Any]) -> str:
    """One clause saying what a strategy trains."""
    k = params.get("freeze_blocks")
    return {
        "feature_extraction": "frozen backbone; only a new head is fitted, on cached features" if params.get("cache")
        else "frozen backbone; only a new head trains",
        "partial_finetune": f"the first {k} backbone blocks frozen, the rest and a new head train",
        "full_finetune": (f"every layer trains from the source weights, the backbone at {params.get('backbone_lr_mult', 1):g}x "
                          f"the head's rate, decaying {params.get('layer_decay', 1):g}x per block towards the input"
                          + (f", L2-SP {params['l2sp']:g}" if params.get("l2sp") else "")),
        "lp_ft": "a linear probe fits the head on frozen features, then every layer fine-tunes from it at a low rate",
        "scratch": "random initialisation, every layer trains",
    }[name]


def choose_strategy(ev: Evidence, settings: "Settings") -> tuple[str, str]:
    """The ``auto`` rule: (strategy name, reason) from size, transferability and budget.

    >>> from transferops.config import Settings
    >>> choose_strategy(Evidence(20, 5, probe_accuracy=0.95, chance=0.2), Settings())[0]
    'feature_extraction'
    """
    cfg = settings.strategy
    t = ev.transferability
    if t is None:
        raise InputError("the auto strategy needs the linear-probe accuracy of the source features; name a strategy instead")
    small = ev.per_class < cfg.small_max_per_class
    fits = t >= cfg.transferable_min
    size_txt = (f"{ev.per_class:.0f} training images per class is {'small' if small else 'large'} "
                f"({'under' if small else 'at least'} the {cfg.small_max_per_class} threshold)")
    fit_txt = (f"a linear probe on the source features reaches {ev.probe_accuracy:.2f} accuracy (chance {ev.chance:.2f}), "
               f"transferability {t:.2f}, so the features {'fit' if fits else 'do not fit'} the target "
               f"({'at least' if fits else 'under'} the {cfg.transferable_min:.2f} threshold)")
    shift_txt = (f"; input shift against the source profile: {ev.shift_test} p={ev.shift_p_val:.3g}"
                 if ev.shift_p_val is not None else "")
    if ev.budget == "low":
        name = "feature_extraction" if fits or small else "partial_finetune"
        why = "the compute budget is low: the cheapest strategy that the size and fit allow"
    elif small and fits:
        name, why = cfg.small_fit, ("a head fitted on the frozen features is as good as it gets with this little "
                                    "data, and fine-tuning would only overfit")
    elif small:
        name, why = cfg.small_misfit, ("the features must adapt, and with little data they adapt best slowly: every "
                                       "layer trains, at rates that fall block by block towards the input")
    elif fits:
        name, why = cfg.large_fit, "there is enough data to adapt every layer, and the source weights are a good start"
    else:
        name, why = cfg.large_misfit, ("there is enough data to learn the features anew and the source features "
                                       "transfer poorly")
    return name, f"{size_txt}; {fit_txt}{shift_txt}: {name} because {why}."
