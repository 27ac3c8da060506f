"""``--strategy search``: a budgeted comparison of strategies by successive halving.

For users who would rather spend compute than trust a rule: every candidate trains on a
fraction of the budget, the better half (``1/eta``) goes on with ``eta`` times more, until
one is left or the full budget is reached (Jamieson & Talwalkar 2016; Hyperband's inner
loop). Candidates are judged on the validation split: the accuracy of the weights each run
kept, ties broken by the lower validation loss. The leaderboard of every rung is kept.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from transferops.assessment import DriftOutcome
    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.sources import SourceModel
    from transferops.strategy import StrategyChoice

Score = tuple[float, float]  # (val accuracy, -val loss): higher is better


def successive_halving(candidates: Sequence[str], evaluate: Callable[[str, float], Score], *,
                       min_fraction: float = 0.25, eta: int = 2) -> tuple[str, list[dict[str, Any]]]:
    """Run the halving schedule with ``evaluate(candidate, budget_fraction) -> score``.

    Returns the winner and one leaderboard row per evaluation (rung, fraction, score, kept).
    A lone survivor is not evaluated again: the caller trains it at the full budget.

    >>> speed = {"a": 0.5, "b": 0.9, "c": 0.7}
    >>> successive_halving(list(speed), lambda c, f: (speed[c] * f, 0.0))[0]
    'b'
    """
    if not candidates:
        raise ValueError("no candidate strategies to search over")
    alive, fraction, rung, rows = list(candidates), min_fraction, 0, []
    while True:
        if len(alive) == 1 and rows:  # the winner trains at the full budget anyway, as the run itself
            return alive[0], rows
        scores = {c: evaluate(c, fraction) for c in alive}
        ranked = sorted(alive, key=lambda c: scores[c], reverse=True)
        last = len(ranked) == 1 or fraction >= 1
        keep = ranked[:1] if last else ranked[:max(1, math.ceil(len(ranked) / eta))]
        rows += [{"rung": rung, "fraction": fraction, "strategy": c, "val_accuracy": scores[c][0],
                  "val_loss": -scores[c][1], "kept": c in keep} for c in ranked]
        if last:
            return keep[0], rows
        alive, fraction, rung = keep, min(1.0, fraction * eta), rung + 1


def search_strategy(settings: "Settings", src: "SourceModel", images: "ImageSet", drift: "DriftOutcome") -> "StrategyChoice":
    """Successive halving over ``strategy.search_candidates`` with short real training runs."""
    from dataclasses import replace

    from transferops.assessment import pick_strategy
    from transferops.engine import checkpoint_key, train_model

    cfg = settings.strategy
    start = time.perf_counter()
    choices = {name: pick_strategy(settings, name, src, images, drift) for name in cfg.search_candidates}

    def evaluate(name: str, fraction: float) -> Score:
        t = settings.training
        scaled = settings.model_copy(update={"training": t.model_copy(update={
            "epochs": max(1, round(t.epochs * fraction)), "min_steps": round(t.min_steps * fraction)})})
        key = checkpoint_key("search", name, fraction, images.root, choices[name].params, scaled.training.model_dump())
        trained = train_model(scaled, src, choices[name], images, settings.checkpoints_dir / "search" / f"{key}.pt",
                              progress=False)
        best = min(trained.fit.history, key=lambda r: r.get("val_loss_smoothed", r["val_loss"]))
        return (round(float(best["val_accuracy"]), 4), -float(best["val_loss"]))

    winner, board = successive_halving(list(choices), evaluate, min_fraction=cfg.search_min_fraction, eta=cfg.search_eta)
    final = [r for r in board if r["strategy"] == winner][-1]
    reason = (f"successive halving over {', '.join(choices)} (from {cfg.search_min_fraction:g} of the budget, "
              f"eta {cfg.search_eta}): {winner} led the last rung with validation accuracy {final['val_accuracy']:.3f}. "
              + choices[winner].reason.replace("chosen by name: ", "Trains: "))
    picked = choices[winner]
    return replace(picked, reason=reason, leaderboard=board, selection_seconds=time.perf_counter() - start,
                   evidence=picked.evidence | {"search": {"candidates": list(choices), "winner": winner}})
