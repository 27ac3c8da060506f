"""The strategy objects: what each reuse strategy freezes, how fast each part learns, in which phases.

Every strategy trains through the same loop (:func:`transferops.engine.train_model`);
a strategy only says which :class:`Phase` s to run. A phase is either a *probe* (the
head fitted as a convex problem on cached embeddings of the frozen backbone) or a
*train* phase (SGD through the unfrozen part). A new strategy is one small class here
plus its name in :data:`transferops.strategy.STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from transferops.models import freeze, unfreeze


@dataclass(frozen=True)
class Phase:
    """One stage of a strategy."""

    name: str
    kind: Literal["probe", "train"]
    freeze_blocks: int | None = 0  # None: every backbone block frozen
    lr: float = 1e-3  # the head's learning rate
    backbone_lr_mult: float = 1.0
    layer_decay: float = 1.0
    l2sp: float = 0.0
    weight_decay: float = 1e-4
    augment: bool = True

    def prepare(self, model: nn.Module) -> nn.Module:
        """Make exactly this phase's blocks trainable (a phase starts from the last one's state)."""
        unfreeze(model)
        if self.freeze_blocks is None:
            return freeze(model)
        return freeze(model, self.freeze_blocks) if self.freeze_blocks > 0 else model


class Strategy:
    """A reuse strategy: its phases for the parameters the choice recorded."""

    name: ClassVar[str]
    pretrained: ClassVar[bool] = True

    def phases(self, p: dict[str, Any]) -> list[Phase]:
        raise NotImplementedError


class FeatureExtraction(Strategy):
    """Frozen backbone, a new head. On cached embeddings the head is a convex fit; without the
    cache (or with a head that is not one linear layer) it trains by SGD through the frozen backbone."""

    name = "feature_extraction"

    def phases(self, p: dict[str, Any]) -> list[Phase]:
        if p.get("cache", True):
            return [Phase("probe", "probe", None)]
        return [Phase("head", "train", None, p["lr"], weight_decay=p["weight_decay"], augment=False)]


class PartialFinetune(Strategy):
    """The first k blocks frozen (k measured, see ``transferops.assessment``), the rest fine-tuned."""

    name = "partial_finetune"

    def phases(self, p: dict[str, Any]) -> list[Phase]:
        return [Phase("finetune", "train", int(p["freeze_blocks"]), p["lr"], p["backbone_lr_mult"],
                      weight_decay=p["weight_decay"])]


class FullFinetune(Strategy):
    """Every layer, with discriminative learning rates and optional L2-SP."""

    name = "full_finetune"

    def phases(self, p: dict[str, Any]) -> list[Phase]:
        return [Phase("finetune", "train", 0, p["lr"], p["backbone_lr_mult"], p.get("layer_decay", 1.0),
                      p.get("l2sp", 0.0), p["weight_decay"])]


class LinearProbeThenFinetune(Strategy):
    """LP-FT (Kumar et al., ICLR 2022): fit the head on frozen features, then fine-tune every
    layer from that head at a low rate, so early gradients do not distort the features."""

    name = "lp_ft"

    def phases(self, p: dict[str, Any]) -> list[Phase]:
        rate = p["lr"] * p["ft_lr_mult"]
        return [Phase("probe", "probe", None),
                # one low rate for every layer: the probed head is no longer random
                Phase("finetune", "train", 0, rate, 1.0, l2sp=p.get("l2sp", 0.0), weight_decay=p["weight_decay"])]


class Scratch(Strategy):
    """Random initialisation, same architecture, same budget rules."""

    name = "scratch"
    pretrained = False

    def phases(self, p: dict[str, Any]) -> list[Phase]:
        return [Phase("train", "train", 0, p["lr"], 1.0, weight_decay=p["weight_decay"])]


REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in
                                       (FeatureExtraction, PartialFinetune, FullFinetune, LinearProbeThenFinetune, Scratch)}


def get_strategy(name: str) -> Strategy:
    """The strategy object of ``name``."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(f"no strategy class for '{name}'; known: {', '.join(REGISTRY)}") from None
