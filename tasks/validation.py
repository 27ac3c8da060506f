"""Dataset validation with Great Expectations: the only adapter to GX.

The core builds the per-image table (``transferops.data.image_table``: decode status,
mode, size, sha256, cross-split duplicates); a GX suite on an ephemeral context checks it
and a per-class count table derived from it. A failed
validation raises :class:`DataValidationError` carrying the full report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from transferops.data import SPLITS, ImageSet, image_table, mark_cross_split_duplicates
from transferops.offline import apply_offline_defaults

apply_offline_defaults()
for _name in ("great_expectations", "great_expectations.data_context.types.base"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def prefetch_gx() -> None:
    """Start importing Great Expectations (~2.5 s) in the background.

    Called just before the images are decoded: decoding runs in worker processes while the
    main thread waits, so the import costs nothing (started earlier, it would compete with
    pure-Python work for the GIL). Python's import lock makes a later
    ``import great_expectations`` wait for this one instead of importing twice.
    """
    import sys
    import threading

    if "great_expectations" not in sys.modules:
        threading.Thread(target=lambda: __import__("great_expectations"), name="gx-import", daemon=True).start()


class DataValidationError(RuntimeError):
    """The dataset failed validation; ``report`` holds every expectation's outcome."""

    def __init__(self, message: str, report: "ValidationReport"):
        super().__init__(message)
        self.report = report


@dataclass
class ValidationReport:
    """Outcome of the suite: per-expectation results with the first offending rows."""

    success: bool
    n_images: int
    duplicates_within_split: int = 0
    table: pd.DataFrame | None = None  # the per-image table, reused by the ingest
    results: list[dict[str, Any]] = field(default_factory=list)
    gx_results: list[dict[str, Any]] = field(default_factory=list)

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        """One line per failed expectation, naming the first offending files."""
        lines = []
        for r in self.failures():
            where = ", ".join(str(x) for x in r["examples"][:5])
            lines.append(f"{r['expectation']} on {r['column']}: {r['unexpected']} offending ({where})")
        return "\n".join(lines)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"success": self.success, "n_images": self.n_images,
                                    "duplicates_within_split": self.duplicates_within_split, "results": self.results,
                                    "great_expectations": self.gx_results}, indent=2, default=str))
        return path


@dataclass(frozen=True)
class Rules:
    """What the suite expects, from ``DataConfig`` plus the run's class list."""

    classes: list[str]
    min_count: int
    allowed_modes: list[str]
    min_side: int
    max_side: int
    max_imbalance: float
    expected_classes: list[str] | None = None  # the registered model's, unless the class set may change

    @classmethod
    def from_config(cls, cfg: Any, classes: list[str], expected_classes: list[str] | None = None) -> "Rules":
        return cls(classes, cfg.min_images_per_class, list(cfg.allowed_modes), cfg.min_side, cfg.max_side,
                   cfg.max_class_imbalance, expected_classes)


def _expectations(rules: Rules):
    import great_expectations as gx

    E = gx.expectations
    decoded = {"row_condition": "decodes==True", "condition_parser": "pandas"}
    images = [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=rules.classes),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeInSet(column="mode", value_set=rules.allowed_modes, **decoded),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=rules.min_side, max_value=rules.max_side, **decoded),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=rules.min_side, max_value=rules.max_side, **decoded),
        E.ExpectColumnValuesToBeInSet(column="duplicate_across_splits", value_set=[False]),
    ]
    if rules.expected_classes is not None:
        images.append(E.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=rules.expected_classes))
    train = {"row_condition": 'split=="train"', "condition_parser": "pandas"}
    counts = [E.ExpectColumnValuesToBeBetween(column="count", min_value=rules.min_count, **train),
              E.ExpectColumnValuesToBeBetween(column="share_of_largest", min_value=1.0 / rules.max_imbalance, **train)]
    return images, counts


def counts_table(table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Images per (split, class), zero rows included, and each class's share of the largest."""
    n = table.groupby(["split", "label"]).size()
    rows = [{"split": s, "label": c, "count": int(n.get((s, c), 0))} for s in SPLITS for c in classes]
    df = pd.DataFrame(rows, columns=["split", "label", "count"])
    largest = df.groupby("split")["count"].transform("max").clip(lower=1)
    df["share_of_largest"] = df["count"] / largest
    return df


def run_suite(images_df: pd.DataFrame, rules: Rules) -> ValidationReport:
    """Validate the image table and its class-count table with one ephemeral GX context."""
    import great_expectations as gx

    # GX sets its own logger levels on import; its "temporary docs site" notice is noise here.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False}
    source = ctx.data_sources.add_pandas("transferops")
    report = ValidationReport(success=True, n_images=len(images_df))
    counts_df = counts_table(images_df, rules.classes)
    dups = images_df[images_df.sha256 != ""].duplicated(["split", "sha256"]).sum()
    report.duplicates_within_split = int(dups)  # reported, not fatal: augmentation copies are common
    image_exps, count_exps = _expectations(rules)
    for name, df, exps, key in (("images", images_df, image_exps, "path"), ("class_counts", counts_df, count_exps, "label")):
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"transferops_{name}"))
        for e in exps:
            suite.add_expectation(e)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        index_cols = [key, "split"] if key != "path" else ["path"]
        result = vd.run(batch_parameters={"dataframe": df},
                        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_cols})
        report.gx_results.append(result.to_json_dict())
        for er in result.results:
            cfg = er.expectation_config
            res = er.result or {}
            rows = res.get("unexpected_index_list") or []
            examples = [_describe(r, df) for r in rows[:10]]
            report.results.append({
                "table": name, "expectation": cfg.type, "column": cfg.kwargs.get("column", "(table)"),
                "success": bool(er.success), "unexpected": int(res.get("unexpected_count") or (0 if er.success else 1)),
                "examples": examples or ([f"observed {res.get('observed_value')}"] if not er.success else []),
            })
        report.success &= bool(result.success)
    return report


def _describe(row: dict[str, Any], df: pd.DataFrame) -> str:
    if "path" in row:
        err = df.loc[df.path == row["path"], "error"]
        reason = err.iloc[0] if len(err) and err.iloc[0] else None
        return f"{row['path']}" + (f" [{reason}]" if reason else "")
    return ", ".join(f"{k}={v}" for k, v in row.items())


@task(cache_policy=NO_CACHE)
def validate_dataset(images: ImageSet, cfg: Any, expected_classes: list[str] | None = None,
                     base: pd.DataFrame | None = None) -> ValidationReport:
    """Decode every image of ``images`` and run the GX suite over them plus ``base``.

    ``base`` is the already-validated table of the version being appended to; only
    the new images are decoded, but the expectations hold for the resulting version.
    Raises DataValidationError when the suite fails.
    """
    prefetch_gx()
    table = image_table(images, max_pixels=cfg.max_image_pixels)
    table["new"] = True
    full = table
    if base is not None and len(base):
        old = base[~base.path.isin(table.path)].assign(new=False)
        full = mark_cross_split_duplicates(pd.concat([old, table], ignore_index=True))
    # the class list is the dataset's own (folders, classes.txt) plus the version appended to
    classes = sorted(set(images.classes) | (set(base.label) if base is not None else set()))
    report = run_suite(full, Rules.from_config(cfg, classes, expected_classes))
    report.table = table
    if not report.success:
        n = len(report.failures())
        raise DataValidationError(f"dataset {images.root} failed {n} expectation(s):\n{report.summary()}", report)
    return report


@task
def load_dataset(source: Path, val_fraction: float, test_fraction: float) -> ImageSet:
    """Scan an ImageFolder tree or a manifest into records."""
    from transferops.data import scan_dataset

    return scan_dataset(source, val_fraction, test_fraction)
