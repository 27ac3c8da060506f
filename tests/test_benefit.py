"""Transfer against scratch: start, slope (area) and asymptote, the plot and the report sections."""

import json
import re

import pytest

from transferops.benefit import (
    CurveSummary,
    plot_transfer_benefit,
    summarise_curve,
    transfer_benefit,
)
from transferops.report import RunReport, render_run_report


def _rows(points, phase=None):
    """History rows from (step, val_accuracy) pairs, one per epoch."""
    rows = [{"epoch": i, "step": s, "val_accuracy": a, "val_loss": 1 - a, "train_loss": 1 - a, "train_accuracy": a}
            for i, (s, a) in enumerate(points)]
    return [r | {"phase": phase} for r in rows] if phase else rows


# transfer starts higher, rises faster and ends higher; both evaluated at steps 10..40
TRANSFER = _rows([(10, 0.5), (20, 0.7), (30, 0.8), (40, 0.9)])
SCRATCH = _rows([(10, 0.1), (20, 0.2), (30, 0.4), (40, 0.6)])
# by hand over [0, 40], flat before step 10, trapezoids after:
#   transfer 0.5*10 + 0.6*10 + 0.75*10 + 0.85*10 = 27    -> 27/40   = 0.675
#   scratch  0.1*10 + 0.15*10 + 0.3*10 + 0.5*10  = 10.5  -> 10.5/40 = 0.2625


def test_a_better_transfer_curve_gives_positive_benefits_of_the_right_size():
    b = transfer_benefit(TRANSFER, SCRATCH)
    assert b.horizon == 40
    assert b.transfer == CurveSummary(start=0.5, auc=pytest.approx(0.675), final=0.9, steps=40)
    assert b.scratch == CurveSummary(start=0.1, auc=pytest.approx(0.2625), final=0.6, steps=40)
    assert b.start == pytest.approx(0.4) and b.slope == pytest.approx(0.4125) and b.asymptote == pytest.approx(0.3)
    s = b.sentence()
    assert "starts 40 points higher" in s and "learns faster (area +0.41 over 40 steps)" in s
    assert "ends 30 points higher" in s and "lower" not in s and "slower" not in s


def test_swapped_curves_give_the_negatives_and_say_so():
    good, bad = transfer_benefit(TRANSFER, SCRATCH), transfer_benefit(SCRATCH, TRANSFER)
    assert (bad.start, bad.slope, bad.asymptote) == pytest.approx((-good.start, -good.slope, -good.asymptote))
    s = bad.sentence()
    assert "starts 40 points lower" in s and "learns slower (area -0.41" in s and "ends 30 points lower" in s
    assert "higher" not in s and "faster" not in s


def test_identical_curves_are_level():
    b = transfer_benefit(TRANSFER, TRANSFER)
    assert (b.start, b.slope, b.asymptote) == (0, 0, 0)
    assert "starts level with scratch" in b.sentence() and "learns as fast" in b.sentence()


def test_different_step_grids_are_compared_over_the_longer_run():
    transfer = _rows([(30, 0.6), (60, 0.8)])
    scratch = _rows([(25, 0.1), (50, 0.2), (75, 0.3), (100, 0.4), (150, 0.9)])
    b = transfer_benefit(transfer, scratch)
    assert b.horizon == 150 and b.scratch.steps == 150 and b.transfer.steps == 60
    # transfer holds its last accuracy (0.8) from step 60 to 150: the model it delivers
    assert b.transfer.auc == pytest.approx((0.6 * 30 + 0.7 * 30 + 0.8 * 90) / 150)
    assert b.scratch.auc == pytest.approx(summarise_curve(scratch).auc)
    # the asymptote is the best accuracy of each whole run
    assert b.scratch.final == 0.9 and b.asymptote == pytest.approx(-0.1)
    # cut at 60 steps, scratch's area would be smaller: the horizon matters
    assert summarise_curve(scratch, 60).auc < b.scratch.auc


def test_a_single_probe_row_is_a_curve():
    probe = _rows([(0, 0.7)], phase="probe")
    assert summarise_curve(probe) == CurveSummary(start=0.7, auc=pytest.approx(0.7), final=0.7, steps=0)
    b = transfer_benefit(probe, SCRATCH)
    # the probe's accuracy holds over scratch's whole run
    assert b.horizon == SCRATCH[-1]["step"] and b.transfer.auc == pytest.approx(0.7)
    assert b.slope == pytest.approx(0.7 - summarise_curve(SCRATCH).auc)
    assert b.start == pytest.approx(0.6) and b.asymptote == pytest.approx(0.1)
    # a probe row and a fine-tune row at the same step: the later row counts for the area, the first is the start
    mixed = _rows([(0, 0.3)], phase="probe") + [r | {"epoch": 1} for r in _rows([(0, 0.5), (10, 0.9)], "finetune")]
    c = summarise_curve(mixed)
    assert c.start == 0.3 and c.final == 0.9 and c.auc == pytest.approx(0.7)


def test_rows_without_step_fall_back_to_epoch_plus_one():
    rows = [{k: v for k, v in r.items() if k != "step"} for r in _rows([(0, 0.2), (0, 0.4), (0, 0.6)])]
    c = summarise_curve(rows)
    assert c.steps == 3 and c.start == 0.2 and c.final == 0.6
    assert c.auc == pytest.approx((0.2 + 0.3 + 0.5) / 3)


def test_empty_or_malformed_histories_raise():
    with pytest.raises(ValueError, match="empty training history"):
        summarise_curve([])
    with pytest.raises(ValueError, match="empty training history"):
        transfer_benefit(TRANSFER, [])
    with pytest.raises(ValueError, match="val_accuracy"):
        summarise_curve([{"epoch": 0, "step": 1}])


def test_as_dict_is_json_and_metrics_are_flat_numbers():
    b = transfer_benefit(TRANSFER, SCRATCH)
    d = json.loads(json.dumps(b.as_dict()))
    assert d["start"] == pytest.approx(0.4) and d["scratch"]["final"] == 0.6 and d["horizon"] == 40
    assert d["sentence"] == b.sentence()
    m = b.metrics()
    assert all(isinstance(v, float) for v in m.values())
    assert m["benefit_slope"] == pytest.approx(0.4125) and m["benefit_asymptote"] == pytest.approx(0.3)
    assert m["scratch_final_val_accuracy"] == 0.6 and m["transfer_auc_val_accuracy"] == pytest.approx(0.675)


def test_the_plot_is_a_png(tmp_path):
    out = plot_transfer_benefit(TRANSFER, _rows([(0, 0.1)]), tmp_path / "benefit.png", scratch_label="random init")
    assert out == tmp_path / "benefit.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _headings(md: str) -> list[str]:
    return re.findall(r"^## (.+)$", md, flags=re.MULTILINE)


def test_the_report_shows_the_strategy_and_the_benefit(tmp_path):
    # the shape of ``StrategyChoice.as_dict()``: name, reason, plain parameters, nested inputs
    strategy = {"name": "partial_finetune", "reason": "20 images per class is small; similarity 0.31 is different.",
                "pretrained": True, "freeze_blocks": 3, "backbone_lr_mult": 1.0, "size": "small", "similarity": 0.31,
                "inputs": {"per_class": 20, "similarity": 0.31}, "note": "a|b"}
    report = RunReport("r1", {"model": "resnet18"}, history=TRANSFER, benefit=transfer_benefit(TRANSFER, SCRATCH),
                       scratch_history=SCRATCH, strategy=strategy)
    md = render_run_report(report, tmp_path).read_text()
    assert _headings(md) == ["Summary", "Strategy", "Learning curves", "Transfer benefit"]
    strat = md.split("## Strategy")[1].split("## ")[0]
    assert "**name:** partial_finetune" in strat and "**reason:** 20 images per class is small" in strat
    assert "| freeze_blocks | 3 |" in strat and "| backbone_lr_mult | 1 |" in strat and "| pretrained | True |" in strat
    assert '| inputs | {"per_class": 20, "similarity": 0.31} |' in strat and "| note | a\\|b |" in strat
    ben = md.split("## Transfer benefit")[1]
    assert "![transfer vs scratch validation accuracy](transfer_benefit.png)" in ben
    assert (tmp_path / "transfer_benefit.png").read_bytes()[:4] == b"\x89PNG"
    assert transfer_benefit(TRANSFER, SCRATCH).sentence() in ben
    assert "| 0.500 | 0.100 | +0.400 |" in ben and "| 0.675 |" in ben and "| 0.900 | 0.600 | +0.300 |" in ben
    assert "steps 0–40" in ben


def test_a_report_without_them_is_unchanged(tmp_path):
    md = render_run_report(RunReport("r0", {"model": "resnet18"}, history=TRANSFER), tmp_path / "a").read_text()
    assert _headings(md) == ["Summary", "Learning curves"]
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"report.md", "learning_curves.png"}
    # an empty strategy is no section; a benefit without the scratch rows is a section without a plot
    md = render_run_report(RunReport("r0", {"model": "resnet18"}, strategy={},
                                     benefit=transfer_benefit(TRANSFER, SCRATCH)), tmp_path / "b").read_text()
    assert _headings(md) == ["Summary", "Transfer benefit"] and "png" not in md
    assert not (tmp_path / "b" / "transfer_benefit.png").exists()
