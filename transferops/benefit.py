"""What transfer learning bought: the transfer run against a scratch baseline.

Every training run also trains a short ``scratch`` baseline (random init, same
architecture, same data), so a report can say whether the source weights helped
rather than assume it. Torrey & Shavlik name three benefits of transfer, and each
is one number here, transfer minus scratch:

* a higher **start**: validation accuracy at the first evaluation;
* a higher **slope**: faster learning, measured as the normalised area under the
  validation-accuracy curve over the optimizer steps both runs share;
* a higher **asymptote**: the best validation accuracy reached (the best model is
  the one kept).

Pure numpy; matplotlib is imported only to draw, with the Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CurveSummary:
    """One run's learning curve in three numbers (accuracies are fractions in [0, 1])."""

    start: float  # val accuracy at the first evaluation
    auc: float  # normalised area under the val-accuracy curve over [0, horizon] steps, in [0, 1]
    final: float  # the best val accuracy reached
    steps: int  # step of the last row


@dataclass(frozen=True)
class TransferBenefit:
    """Transfer against scratch; ``horizon`` is the step range both areas cover."""

    transfer: CurveSummary
    scratch: CurveSummary
    horizon: int

    @property
    def start(self) -> float:
        """Transfer's start minus scratch's (accuracy at the first evaluation)."""
        return self.transfer.start - self.scratch.start

    @property
    def slope(self) -> float:
        """Transfer's normalised area minus scratch's, over the horizon."""
        return self.transfer.auc - self.scratch.auc

    @property
    def asymptote(self) -> float:
        """Transfer's best val accuracy minus scratch's."""
        return self.transfer.final - self.scratch.final

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: the three differences, the horizon, both summaries and the sentence."""
        return {"start": self.start, "slope": self.slope, "asymptote": self.asymptote, "horizon": self.horizon,
                "transfer": asdict(self.transfer), "scratch": asdict(self.scratch), "sentence": self.sentence()}

    def metrics(self) -> dict[str, float]:
        """A flat numeric dict for MLflow metrics."""
        out = {"benefit_start": self.start, "benefit_slope": self.slope, "benefit_asymptote": self.asymptote,
               "benefit_horizon_steps": float(self.horizon)}
        for run, s in (("transfer", self.transfer), ("scratch", self.scratch)):
            out |= {f"{run}_start_val_accuracy": s.start, f"{run}_auc_val_accuracy": s.auc,
                    f"{run}_final_val_accuracy": s.final, f"{run}_steps": float(s.steps)}
        return out

    def sentence(self) -> str:
        """The three differences in plain language, honest about which way each goes."""
        def points(d: float) -> str:
            p = abs(d) * 100
            if p < 0.05:
                return "level with scratch"
            return f"{p:.0f} points {'higher' if d > 0 else 'lower'}" if p >= 10 else \
                f"{p:.1f} points {'higher' if d > 0 else 'lower'}"

        pace = "as fast" if abs(self.slope) < 0.005 else ("faster" if self.slope > 0 else "slower")
        return (f"Compared with scratch, transfer starts {points(self.start)}, learns {pace} "
                f"(area {self.slope:+.2f} over {self.horizon} steps) and ends {points(self.asymptote)}.")


def _curve(history: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, val accuracies) in row order; a row without "step" uses ``epoch + 1``."""
    if not history:
        raise ValueError("empty training history: need at least one evaluation row to summarise a learning curve")
    try:
        steps = np.array([float(r["step"]) if r.get("step") is not None else float(r["epoch"]) + 1 for r in history])
        acc = np.array([float(r["val_accuracy"]) for r in history])
    except KeyError as e:
        raise ValueError(f"history row lacks {e}: every row needs 'val_accuracy' and 'step' or 'epoch'") from None
    return steps, acc


def _area(steps: np.ndarray, acc: np.ndarray, horizon: float) -> float:
    """Mean accuracy over [0, horizon] of the curve drawn through the evaluations.

    The curve is piecewise linear between evaluations (trapezoid rule) and flat
    outside them: before the first evaluation it holds the first accuracy, after the
    last one the last accuracy. Where rows share a step (a probe row at step 0, say)
    the later row counts.
    """
    order = np.argsort(steps, kind="stable")
    steps, acc = steps[order], acc[order]
    keep = np.append(steps[1:] != steps[:-1], True)  # the last row of each step
    steps, acc = steps[keep], acc[keep]
    knots = np.unique(np.concatenate([[0.0, horizon], steps[(steps > 0) & (steps < horizon)]]))
    values = np.interp(knots, steps, acc)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(knots)) / horizon)


def summarise_curve(history: Sequence[dict[str, Any]], horizon: int | None = None) -> CurveSummary:
    """Start, area, best and last step of one run's val-accuracy curve.

    ``horizon`` is the step range of the area (default: this run's last step); it is
    at least 1 so a single probe row at step 0 still has an area, its own accuracy.
    Raises ``ValueError`` for an empty history or rows without ``val_accuracy``.
    """
    steps, acc = _curve(history)
    h = max(1, int(steps[-1] if horizon is None else horizon))
    return CurveSummary(start=float(acc[0]), auc=_area(steps, acc, float(h)), final=float(acc.max()),
                        steps=int(steps[-1]))


def transfer_benefit(transfer_history: Sequence[dict[str, Any]],
                     scratch_history: Sequence[dict[str, Any]]) -> TransferBenefit:
    """Compare the two runs over the longer run's steps (at least 1).

    A run that ended sooner (early stopping, or a probe with no SGD steps at all) holds its
    last accuracy from then on: that is the model it delivers, and cutting the other run
    at its end would hide exactly the slow learning the area is there to show.
    """
    t_steps, _ = _curve(transfer_history)
    s_steps, _ = _curve(scratch_history)
    horizon = max(1, int(max(t_steps[-1], s_steps[-1])))
    return TransferBenefit(summarise_curve(transfer_history, horizon), summarise_curve(scratch_history, horizon), horizon)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt


def plot_transfer_benefit(transfer_history: Sequence[dict[str, Any]], scratch_history: Sequence[dict[str, Any]],
                          path: Path, *, transfer_label: str = "transfer", scratch_label: str = "scratch") -> Path:
    """Both val-accuracy curves against optimizer step, starts and asymptotes marked; a PNG at ``path``."""
    benefit = transfer_benefit(transfer_history, scratch_history)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for history, label, summary, colour in ((transfer_history, transfer_label, benefit.transfer, "tab:blue"),
                                            (scratch_history, scratch_label, benefit.scratch, "tab:orange")):
        steps, acc = _curve(history)
        ax.plot(steps, acc, "o-", color=colour, ms=3, label=f"{label} (best {summary.final:.3f})")
        ax.plot(steps[:1], acc[:1], "v", color=colour, ms=9)  # the start
        ax.axhline(summary.final, color=colour, ls="--", lw=1, alpha=0.7)  # the asymptote
    ax.axvline(benefit.horizon, color="grey", ls=":", lw=1, label=f"horizon ({benefit.horizon} steps)")
    ax.set(xlabel="optimizer step", ylabel="val accuracy", ylim=(0, 1.02),
           title=f"{transfer_label} − {scratch_label}: start {benefit.start * 100:+.1f} pts, "
                 f"area {benefit.slope:+.2f}, final {benefit.asymptote * 100:+.1f} pts")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
