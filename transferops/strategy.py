"""Reuse strategies and the rule that picks one from dataset size and source similarity.

The classic four cases of transfer learning (Yosinski et al. 2014; the CS231n notes):

=============  =========================  ===========================================
size           similar to the source       different from the source
=============  =========================  ===========================================
small          ``feature_extraction``      ``partial_finetune`` (freeze first k blocks)
large          ``full_finetune``           ``scratch`` (or ``full_finetune``)
=============  =========================  ===========================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from transferops.errors import InputError

if TYPE_CHECKING:  # light to import: the CLI and the flows' parameter models read the names
    from torch import nn

    from transferops.config import StrategyConfig

STRATEGIES = ("feature_extraction", "partial_finetune", "full_finetune", "scratch")
CHOICES = ("auto", *STRATEGIES)  # what a user may ask for


@dataclass(frozen=True)
class StrategyChoice:
    """A chosen strategy and everything needed to apply and explain it."""

    name: str
    reason: str
    pretrained: bool  # start from the source weights
    freeze_blocks: int | None  # None: freeze every backbone block; 0: none
    backbone_lr_mult: float  # backbone learning rate relative to the head's
    size: str | None = None  # "small" / "large" when chosen automatically
    similarity: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def strategy_by_name(name: str, *, n_blocks: int, cfg: StrategyConfig, backbone_lr_mult: float,
                     reason: str | None = None, size: str | None = None,
                     similarity: float | None = None) -> StrategyChoice:
    """Build the choice for an explicitly named strategy."""
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy '{name}'; choose one of: auto, {', '.join(STRATEGIES)}")
    k = cfg.partial_freeze_blocks if cfg.partial_freeze_blocks is not None else n_blocks // 2
    k = min(k, n_blocks)
    table = {
        "feature_extraction": (True, None, 1.0, "frozen backbone, only the new head trains"),
        "partial_finetune": (True, k, 1.0, f"first {k} of {n_blocks} backbone blocks frozen, the rest and the new head train"),
        "full_finetune": (True, 0, backbone_lr_mult, f"every layer trains from the source weights, backbone at {backbone_lr_mult:g}x the head's learning rate"),
        "scratch": (False, 0, 1.0, "random initialisation, every layer trains"),
    }
    pretrained, freeze_blocks, mult, how = table[name]
    return StrategyChoice(name, reason or f"chosen by name: {how}.", pretrained, freeze_blocks, mult, size, similarity)


def choose_strategy(per_class: float, similarity: float, *, n_blocks: int, cfg: StrategyConfig,
                    backbone_lr_mult: float) -> StrategyChoice:
    """The ``auto`` rule: small/large by train images per class, similar/different by similarity.

    >>> from transferops.config import StrategyConfig
    >>> choose_strategy(50, 0.9, n_blocks=6, cfg=StrategyConfig(), backbone_lr_mult=0.1).name
    'feature_extraction'
    """
    small = per_class < cfg.small_max_per_class
    similar = similarity >= cfg.similar_min_similarity
    size = "small" if small else "large"
    size_txt = (f"{per_class:.0f} training images per class is {size} "
                f"({'under' if small else 'at least'} the {cfg.small_max_per_class} threshold)")
    sim_txt = (f"similarity {similarity:.2f} to the source domain is {'similar' if similar else 'different'} "
               f"({'at least' if similar else 'under'} the {cfg.similar_min_similarity:.2f} threshold)")
    if small and similar:
        name = "feature_extraction"
        why = ("the source features already describe this data, and too few images would let a fine-tuned "
               "backbone overfit, so only a new head is trained on frozen features")
    elif small:
        name = "partial_finetune"
        why = ("the early blocks hold generic edges and textures worth keeping, but the later, source-specific "
               "blocks must adapt; freezing the early ones keeps the trainable part small enough for the data")
    elif similar:
        name = "full_finetune"
        why = ("there is enough data to adapt every layer without overfitting, and the source weights are a good "
               "start, so everything trains with a lower learning rate for the backbone than for the head")
    else:
        name = cfg.large_different
        why = ("there is enough data to learn the features anew and the source features transfer poorly, so "
               + ("training starts from random weights" if name == "scratch" else
                  "every layer is fine-tuned (configured instead of training from scratch)"))
    reason = f"{size_txt}; {sim_txt}: {name} because {why}."
    return strategy_by_name(name, n_blocks=n_blocks, cfg=cfg, backbone_lr_mult=backbone_lr_mult,
                            reason=reason, size=size, similarity=similarity)


def apply_strategy(model: "nn.Module", choice: StrategyChoice) -> "nn.Module":
    """Freeze the blocks the strategy names; the head always stays trainable."""
    from transferops.models import freeze

    if choice.freeze_blocks is None:
        return freeze(model)
    if choice.freeze_blocks > 0:
        return freeze(model, choice.freeze_blocks)
    return model


def n_blocks(model: "nn.Module") -> int:
    """Number of backbone blocks that freezing counts in."""
    from transferops.models import backbone_blocks

    return len(backbone_blocks(model))
