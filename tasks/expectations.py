"""The Great Expectations suite over the per-image table: the only adapter to GX.

Kept free of Prefect imports, because it also runs in a helper process
(:class:`SuiteRunner`) that should import nothing but GX and pandas. The Prefect tasks
around it are in ``tasks.validation``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from transferops.data import SPLITS
from transferops.errors import EXIT_VALIDATION, TransferopsError
from transferops.offline import apply_offline_defaults

apply_offline_defaults()
for _name in ("great_expectations", "great_expectations.data_context.types.base"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _import_gx() -> None:
    import great_expectations  # noqa: F401


# The helper process, once started, serves every later suite of this process (the demo's three
# flows, `transferops serve`'s runs): its GX import is paid once. Shut down at interpreter exit.
_helper = None


class SuiteRunner:
    """Runs the GX suite in a helper process that starts importing GX at once.

    Importing GX costs 2-5 s of CPU, as much as decoding 70,000 small images. Started
    before the decoding, the import runs beside it on another core (a thread would
    fight the decoding's result handling for the GIL). The helper then stays up for the
    process's later suites, which so pay nothing for the import. With ``enabled=False``
    (a few images: a new process would cost more than it saves) and no helper up yet, or
    when GX is already imported here, the suite runs in this process. Entering twice is
    harmless, so a runner can be started early and handed down. A caller whose ``__main__``
    cannot be re-imported (no ``if __name__ == "__main__":`` guard) breaks spawned
    processes; the suite then runs here too, slower but with the same result.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = (enabled or _helper is not None) and "great_expectations" not in sys.modules
        self._pool = None

    def __enter__(self) -> "SuiteRunner":
        global _helper
        if self.enabled and self._pool is None:
            if _helper is None:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor

                _helper = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
                _helper.submit(_import_gx)
            self._pool = _helper
        return self

    def run(self, images_df: pd.DataFrame, rules: "Rules") -> "ValidationReport":
        """``run_suite(images_df, rules)``, in the helper process when there is one."""
        global _helper
        from concurrent.futures.process import BrokenProcessPool

        if self._pool is not None:
            try:
                return self._pool.submit(run_suite, images_df, rules).result()
            except BrokenProcessPool:  # the helper died or could not start: this process runs it
                if _helper is self._pool:
                    _helper = None
                self._pool.shutdown(wait=False)
                self._pool = None
        return run_suite(images_df, rules)

    def __exit__(self, *exc: object) -> None:
        self._pool = None  # the helper itself stays up for the next suite


class DataValidationError(TransferopsError, RuntimeError):
    """The dataset failed validation; ``report`` holds every expectation's outcome."""

    exit_code = EXIT_VALIDATION

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
    # Condition objects, not pandas query strings: GX 1.9 deprecated string row_conditions
    # and condition_parser (removed in 2.0); these also say what they mean to any engine.
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    decoded = {"row_condition": Column("decodes") == True}  # noqa: E712  (builds a condition, not a test)
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
    train = {"row_condition": Column("split") == "train"}
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
