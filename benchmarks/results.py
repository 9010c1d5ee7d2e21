"""The tidy result-row schema (DESIGN §7): one row per model × dataset × split × seed.

Rows are plain dicts with the columns of `RESULT_COLUMNS`; pandas reads and writes them, with
the dtypes fixed here so that a CSV round-trip gives back the same frame. Tables render to
Markdown, CSV and LaTeX.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.errors import ConfigError
from benchmarks.io import atomic_write_text

# column -> pandas dtype
RESULT_COLUMNS: dict[str, str] = {
    "suite": "string",
    "experiment": "string",
    "model": "string",
    "kind": "string",
    "method": "string",
    "variant": "string",
    "dataset": "string",
    "protocol": "string",  # PROTOCOL.md §1: dataset, task, split hashes, options, input, preprocessing
    "budget_images": "Int64",  # PROTOCOL.md §2: training images processed, parents included
    "split": "string",
    "seed": "Int64",
    "accuracy": "float64",  # percent, top-1
    "f1": "float64",  # percent, where the paper uses an F-score
    "macs_mean": "float64",  # executed MACs per sample, controller included
    "macs_std": "float64",
    "macs_p50": "float64",
    "macs_p90": "float64",
    "macs_p99": "float64",
    "macs_min": "float64",
    "macs_max": "float64",
    "macs_theoretical_mean": "float64",
    "macs_controller_mean": "float64",
    "simulated_savings": "boolean",
    "params": "Int64",
    "selected_epoch": "Int64",
    "config_hash": "string",
    "git_commit": "string",
    "env_hash": "string",
    "run_dir": "string",
}
ID_COLUMNS = ("experiment", "model", "dataset", "split", "seed")
#: columns added after rows were first committed: missing in an older file, they read as empty
LATER_COLUMNS = ("protocol", "budget_images")


def make_row(**values: Any) -> dict[str, Any]:
    """A result row with every column present; unknown keys are an error (typos hide data)."""
    unknown = sorted(set(values) - set(RESULT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown result columns: {', '.join(unknown)}")
    return {column: values.get(column) for column in RESULT_COLUMNS}


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([make_row(**row) for row in rows], columns=list(RESULT_COLUMNS))
    return frame.astype(RESULT_COLUMNS)


def write_results(rows: Iterable[dict[str, Any]] | pd.DataFrame, path: str | os.PathLike) -> Path:
    frame = rows if isinstance(rows, pd.DataFrame) else results_frame(rows)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g")
    return atomic_write_text(path, buffer.getvalue())


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"results file '{path}' does not exist") from None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"results file '{path}' is not a CSV of result rows ({type(exc).__name__})") from None
    for column in LATER_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.NA
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"results file '{path}' lacks columns: {', '.join(missing)}")
    frame = frame[list(RESULT_COLUMNS)]
    for column in ("simulated_savings",):
        frame[column] = frame[column].map({"True": True, "False": False}, na_action="ignore")
    return frame.astype(RESULT_COLUMNS)


def collect_results(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    frames = [read_results(p) for p in paths]
    if not frames:
        return results_frame([])
    return pd.concat(frames, ignore_index=True)


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1e5:
            return f"{value / 1e6:,.3f}M"
        return f"{value:.2f}"
    return str(value)


def to_markdown(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (large MAC counts shown in millions)."""
    columns = list(columns or frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame[columns].iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    columns = list(columns or frame.columns)
    escaped = [c.replace("_", r"\_") for c in columns]
    lines = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule", " & ".join(escaped) + r" \\", r"\midrule"]
    for _, row in frame[columns].iterrows():
        cells = [_cell(row[c]).replace("_", r"\_").replace("%", r"\%").replace("–", "--") for c in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
