"""Dataset validation with Great Expectations: the only adapter to GX.

The core builds two tables (``transferops.data.image_table`` and
``class_count_table``); a GX suite on an ephemeral context checks them. A failed
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

from transferops.data import SPLITS, ImageSet, class_count_table, image_table
from transferops.offline import apply_offline_defaults

apply_offline_defaults()
for _name in ("great_expectations", "great_expectations.data_context.types.base"):
    logging.getLogger(_name).setLevel(logging.WARNING)


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
        path.write_text(json.dumps({"success": self.success, "n_images": self.n_images, "results": self.results,
                                    "great_expectations": self.gx_results}, indent=2, default=str))
        return path


def _expectations(classes: list[str], min_count: int):
    import great_expectations as gx

    E = gx.expectations
    images = [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeInSet(column="duplicate_across_splits", value_set=[False]),
    ]
    counts = [E.ExpectColumnValuesToBeBetween(column="count", min_value=min_count,
                                              row_condition='split=="train"', condition_parser="pandas")]
    return images, counts


def run_suite(images_df: pd.DataFrame, counts_df: pd.DataFrame, classes: list[str], min_count: int) -> ValidationReport:
    """Validate the image table and the class-count table with one ephemeral GX context."""
    import great_expectations as gx

    # GX sets its own logger levels on import; its "temporary docs site" notice is noise here.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False}
    source = ctx.data_sources.add_pandas("transferops")
    report = ValidationReport(success=True, n_images=len(images_df))
    image_exps, count_exps = _expectations(classes, min_count)
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


@task
def validate_dataset(images: ImageSet, min_count: int, max_pixels: int) -> ValidationReport:
    """Decode every image and run the GX suite; raise DataValidationError when it fails."""
    table = image_table(images, max_pixels=max_pixels)
    report = run_suite(table, class_count_table(images), images.classes, min_count)
    if not report.success:
        n = len(report.failures())
        raise DataValidationError(f"dataset {images.root} failed {n} expectation(s):\n{report.summary()}", report)
    return report


@task
def load_dataset(source: Path, val_fraction: float, test_fraction: float) -> ImageSet:
    """Scan an ImageFolder tree or a manifest into records."""
    from transferops.data import scan_dataset

    return scan_dataset(source, val_fraction, test_fraction)
