"""``--strategy search``: a budgeted comparison of strategies by successive halving.

For users who would rather spend compute than trust a rule: every candidate trains on a
fraction of the budget, the better half (``1/eta``) goes on with ``eta`` times more, until
one is left or the full budget is reached (Jamieson & Talwalkar 2016; Hyperband's inner
loop). Candidates are judged on the validation split: the accuracy of the weights each run
kept, ties broken by the lower validation loss. The leaderboard of every rung is kept.

The trials of a rung are independent, so a caller may run them in parallel: ``map_trials``
is any ``map`` that returns the results in the order of its items (``tasks/runners.py``
gives one that runs each trial as a Prefect task on a Dask cluster). Each trial seeds itself
(``train_model`` seeds from ``training.seed``) and shares nothing with the others, so the
leaderboard does not depend on where or in which order the trials ran.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

if TYPE_CHECKING:
    from transferops.assessment import DriftOutcome
    from transferops.config import Settings
    from transferops.data import ImageSet
    from transferops.sources import SourceModel
    from transferops.strategy import StrategyChoice

Score = tuple[float, float]  # (val accuracy, -val loss): higher is better
T = TypeVar("T")
R = TypeVar("R")
# map_trials(fn, items) -> [fn(item) for item in items], in the order of items, wherever fn runs
TrialMap = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def sequential_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """The default :data:`TrialMap`: each trial in turn, in this process."""
    return [fn(item) for item in items]


@dataclass(frozen=True)
class RungTrial:
    """``evaluate(candidate, fraction)`` for one rung: the function a :data:`TrialMap` maps.

    A module-level class, not a lambda, so it pickles to another process; ``label`` names a
    trial for whoever runs it (a Prefect task run's name).
    """

    evaluate: Callable[[str, float], Score]
    fraction: float

    def __call__(self, candidate: str) -> Score:
        return self.evaluate(candidate, self.fraction)

    def label(self, candidate: str) -> str:
        return f"{candidate} at {self.fraction:g}"


def successive_halving(candidates: Sequence[str], evaluate: Callable[[str, float], Score], *,
                       min_fraction: float = 0.25, eta: int = 2,
                       map_trials: TrialMap | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Run the halving schedule with ``evaluate(candidate, budget_fraction) -> score``.

    Returns the winner and one leaderboard row per evaluation (rung, fraction, score, kept).
    A lone survivor is not evaluated again: the caller trains it at the full budget.
    ``map_trials`` runs the evaluations of one rung (default: :func:`sequential_map`); the
    result is the same whichever map runs them, as long as ``evaluate`` is deterministic.

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
        results = (map_trials or sequential_map)(RungTrial(evaluate, fraction), alive)
        if len(results) != len(alive):
            raise RuntimeError(f"map_trials returned {len(results)} scores for {len(alive)} trials")
        scores = dict(zip(alive, results, strict=True))
        ranked = sorted(alive, key=lambda c: scores[c], reverse=True)
        last = len(ranked) == 1 or fraction >= 1
        keep = ranked[:1] if last else ranked[:max(1, math.ceil(len(ranked) / eta))]
        rows += [{"rung": rung, "fraction": fraction, "strategy": c, "val_accuracy": scores[c][0],
                  "val_loss": -scores[c][1], "kept": c in keep} for c in ranked]
        if last:
            return keep[0], rows
        alive, fraction, rung = keep, min(1.0, fraction * eta), rung + 1


@dataclass
class ShortRun:
    """One trial of the search: ``strategy`` trained on ``fraction`` of the budget, scored on val.

    A plain object holding its inputs (not a closure), so it pickles to a Dask worker; its
    checkpoint key covers strategy, fraction, data and training, so trials never share a file.
    """

    settings: "Settings"
    src: "SourceModel"
    images: "ImageSet"
    choices: dict[str, "StrategyChoice"]

    def __call__(self, name: str, fraction: float) -> Score:
        from transferops.engine import checkpoint_key, train_model

        s, t = self.settings, self.settings.training
        scaled = s.model_copy(update={"training": t.model_copy(update={
            "epochs": max(1, round(t.epochs * fraction)), "min_steps": round(t.min_steps * fraction)})})
        choice = self.choices[name]
        key = checkpoint_key("search", name, fraction, self.images.root, choice.params, scaled.training.model_dump())
        trained = train_model(scaled, self.src, choice, self.images, s.checkpoints_dir / "search" / f"{key}.pt",
                              progress=False)
        best = min(trained.fit.history, key=lambda r: r.get("val_loss_smoothed", r["val_loss"]))
        return (round(float(best["val_accuracy"]), 4), -float(best["val_loss"]))


def search_strategy(settings: "Settings", src: "SourceModel", images: "ImageSet", drift: "DriftOutcome",
                    map_trials: TrialMap | None = None) -> "StrategyChoice":
    """Successive halving over ``strategy.search_candidates`` with short real training runs.

    ``map_trials`` runs each rung's trials (default: one after another here); the candidates'
    own measurements (e.g. partial_finetune's k) are taken first, in this process.
    """
    from dataclasses import replace

    from transferops.assessment import pick_strategy

    cfg = settings.strategy
    start = time.perf_counter()
    choices = {name: pick_strategy(settings, name, src, images, drift) for name in cfg.search_candidates}
    evaluate = ShortRun(settings, src, images, choices)
    winner, board = successive_halving(list(choices), evaluate, min_fraction=cfg.search_min_fraction,
                                       eta=cfg.search_eta, map_trials=map_trials)
    final = [r for r in board if r["strategy"] == winner][-1]
    reason = (f"successive halving over {', '.join(choices)} (from {cfg.search_min_fraction:g} of the budget, "
              f"eta {cfg.search_eta}): {winner} led the last rung with validation accuracy {final['val_accuracy']:.3f}. "
              + choices[winner].reason.replace("chosen by name: ", "Trains: "))
    picked = choices[winner]
    return replace(picked, reason=reason, leaderboard=board, selection_seconds=time.perf_counter() - start,
                   evidence=picked.evidence | {"search": {"candidates": list(choices), "winner": winner}})
