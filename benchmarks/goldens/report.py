"""How a golden check reads its files and reports: one error type for unreadable golden files,
one `Mismatch` per moved number, a readable diff, JUnit XML."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.errors import DynbenchError
from benchmarks.io import atomic_write_text


class GoldenFileError(DynbenchError):
    """A golden file that cannot be read: missing, not JSON, another schema, bad fields."""


def read_golden_file(path: str | os.PathLike, kind: str, schema: int, what: str, hint: str) -> dict[str, Any]:
    """The JSON document of a golden file of `kind` and `schema`, or one clear error saying
    what is wrong with it and how to make it again (`hint`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldenFileError(f"golden file '{path}' does not exist; {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenFileError(f"golden file '{path}' cannot be read: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GoldenFileError(
            f"golden file '{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"was it edited by hand? {hint}"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise GoldenFileError(f"golden file '{path}' is not a {what} (kind '{kind}')")
    if doc.get("schema") != schema:
        raise GoldenFileError(
            f"golden file '{path}' has schema version {doc.get('schema')!r}; this dynbench reads "
            f"version {schema}. {hint[0].upper() + hint[1:]}."
        )
    return doc


@dataclass(frozen=True)
class Mismatch:
    """One number that moved: where (`item`, e.g. a case or check name), what (`metric`),
    the pinned and the fresh value, and the rule it broke (`allowed`)."""

    item: str
    metric: str
    expected: Any
    got: Any
    allowed: str

    def line(self) -> str:
        return (
            f"  {self.item:<28} {self.metric:<34} expected {show(self.expected):>14}  "
            f"got {show(self.got):>14}  ({self.allowed})"
        )


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_mismatches(
    mismatches: Sequence[Mismatch], where: str, hint: str, per_item: int = 8
) -> str:
    """A readable diff: how many numbers moved in each golden, then the first `per_item`
    lines of each, then how to re-record."""
    groups: dict[str, list[Mismatch]] = {}
    for m in mismatches:
        groups.setdefault(m.item, []).append(m)
    counts = ", ".join(f"{item} {len(ms)}" for item, ms in groups.items())
    lines = [f"{len(mismatches)} golden number(s) moved ({where}): {counts}"]
    for item, ms in groups.items():
        lines += [m.line() for m in ms[:per_item]]
        if len(ms) > per_item:
            lines.append(f"  ... and {len(ms) - per_item} more in {item}")
    lines.append(f"If the change is deliberate, re-record them with `{hint}` and commit the diff.")
    return "\n".join(lines)


def write_junit(
    path: str | os.PathLike,
    suite: str,
    results: Mapping[str, Sequence[Mismatch]],
    times: Mapping[str, float] | None = None,
) -> None:
    """A JUnit XML report (one test case per golden, a failure listing its moved numbers),
    the format CI systems (GitHub Actions reporters, GitLab, Jenkins) display."""
    times = times or {}
    failures = sum(1 for m in results.values() if m)
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{sum(times.values()):.3f}",
    )
    for name, mismatches in results.items():
        case = ET.SubElement(root, "testcase", classname=suite, name=name, time=f"{times.get(name, 0.0):.3f}")
        if mismatches:
            failure = ET.SubElement(
                case, "failure", message=f"{len(mismatches)} golden number(s) moved", type="GoldenDrift"
            )
            failure.text = "\n".join(m.line() for m in mismatches)
    ET.indent(root)
    atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
