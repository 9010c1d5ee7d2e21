"""`dynbench leaderboard render`: the published page, from the records alone.

Writes `index.md` and `index.html` beside the entries: one table per protocol (admitted and
marked entries, reported beside re-evaluated numbers), an accuracy–MACs and an
accuracy–latency plot per protocol with the Pareto front drawn, and the rejected entries in a
separate table with their reasons. The HTML page is one self-contained file (inline CSS, SVG
and a few lines of script for sorting): no network, no dependency.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.io import atomic_write_text
from benchmarks.leaderboard.records import record_paths, validate_leaderboard

__all__ = ["render", "leaderboard_rows"]

SHOWN = ("admitted", "marked")


def _num(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _macs(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:,.3f}M" if value >= 1e5 else f"{value:,.0f}"


def leaderboard_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per evaluated record (pending ones are not on the page)."""
    rows = []
    for r in records:
        ev = r.get("evaluation")
        if not ev:
            continue
        latency = ev.get("latency") or {}
        p50 = latency.get("p50_ms") or {}
        ratio = ev.get("realization_ratio") or {}
        test = ev["accuracy"]["test"]
        rows.append({
            "entry_id": r["entry_id"], "title": r["title"], "authors": ", ".join(r["authors"]),
            "paper_url": r.get("paper_url"), "code_url": r.get("code_url"),
            "model": r["model"]["id"], "protocol": r["protocol"]["id"], "state": r["status"]["state"],
            "reasons": r["status"]["reasons"], "fast": ev.get("fast", False),
            "accuracy_reported": r["reported"]["accuracy_test"], "accuracy": test["accuracy"], "images": test["images"],
            "f1": test.get("f1") if r["protocol"]["options"].get("positive_classes") else None,
            "f1_reported": r["reported"].get("f1_test"),
            "macs_reported": r["reported"]["macs_mean"], "macs": ev["cost"]["macs_mean"],
            "macs_controller": ev["cost"]["macs_controller_mean"],
            "latency_b1_ms": p50.get("1"), "latency_b64_ms": p50.get("64"),
            "realization_b1": ratio.get("1"), "realization_b64": ratio.get("64"),
            "evaluated": r["dates"].get("evaluated"),
        })  # fmt: skip
    return rows


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher)."""
    front, best = [], float("-inf")
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def _svg_plot(rows: list[dict[str, Any]], x_key: str, x_label: str, title: str) -> str:
    """An inline SVG scatter of accuracy against `x_key`, the Pareto front as a line."""
    points = [(row[x_key], row["accuracy"], row["entry_id"]) for row in rows if row.get(x_key)]
    if not points:
        return f'<p class="noplot">{html.escape(title)}: no entry has this measurement.</p>'
    width, height, pad = 460, 300, 48
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = 0.0, max(xs) * 1.08
    y0, y1 = min(ys) - 1.0, max(ys) + 1.0

    def sx(v: float) -> float:
        return pad + (v - x0) / (x1 - x0 or 1) * (width - 1.5 * pad)

    def sy(v: float) -> float:
        return height - pad - (v - y0) / (y1 - y0 or 1) * (height - 1.6 * pad)

    parts = [f'<svg class="plot" role="img" aria-label="{html.escape(title)}" data-x="{x_key}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{html.escape(title)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad / 2}" y2="{height - pad}" class="axis"/>',
             f'<line x1="{pad}" y1="{0.6 * pad}" x2="{pad}" y2="{height - pad}" class="axis"/>',
             f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">test accuracy (%)</text>',
             f'<text x="{pad}" y="{height - pad + 14}" text-anchor="middle" class="tick">0</text>',
             f'<text x="{sx(x1 / 1.08):.1f}" y="{height - pad + 14}" text-anchor="middle" class="tick">{x1 / 1.08:,.3g}</text>',
             f'<text x="{pad - 4}" y="{sy(y0 + 1):.1f}" text-anchor="end" class="tick">{y0 + 1:.1f}</text>',
             f'<text x="{pad - 4}" y="{sy(y1 - 1):.1f}" text-anchor="end" class="tick">{y1 - 1:.1f}</text>']  # fmt: skip
    front = _pareto([(x, y) for x, y, _ in points])
    if len(front) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        parts.append(f'<polyline points="{path}" class="pareto"/>')
    on_front = set(front)
    for x, y, entry in points:
        cls = "point front" if (x, y) in on_front else "point"
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" class="{cls}" data-entry="{html.escape(entry)}">'
                     f"<title>{html.escape(entry)}: {y:.2f}% at {x:,.4g}</title></circle>")  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)


_COLUMNS = [
    ("entry", "entry_id", "text"), ("model", "model", "text"), ("status", "state", "text"),
    ("accuracy (re-evaluated)", "accuracy", "num"), ("accuracy (reported)", "accuracy_reported", "num"),
    ("F-score (re-evaluated)", "f1", "num"), ("F-score (reported)", "f1_reported", "num"),
    ("MACs (re-counted)", "macs", "num"), ("controller MACs", "macs_controller", "num"),
    ("CPU b1 (ms)", "latency_b1_ms", "num"), ("CPU b64 (ms)", "latency_b64_ms", "num"),
    ("realization b1", "realization_b1", "num"), ("realization b64", "realization_b64", "num"),
]  # fmt: skip


def _score(row: dict[str, Any]) -> float:
    """Sort key, best first: the protocol's metric (F-score on a binary task, else accuracy)."""
    return -(row["f1"] if row["f1"] is not None else row["accuracy"])


def _columns(group: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The table's columns: F-score ones only for a binary protocol (scored by F-score)."""
    binary = any(r["f1"] is not None for r in group)
    return [c for c in _COLUMNS if binary or c[1] not in ("f1", "f1_reported")]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if value is None:
        return "–"
    if key == "entry_id":
        link = row.get("paper_url") or row.get("code_url")
        name = html.escape(value)
        return f'<a href="{html.escape(link)}">{name}</a>' if link else name
    if key in ("macs", "macs_controller"):
        return _macs(value)
    if key in ("accuracy", "accuracy_reported", "f1", "f1_reported"):
        return _num(value)
    if isinstance(value, float):
        return _num(value, 3)
    return html.escape(str(value))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
th{background:#f3f3f3;cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tr.marked td{background:#fff6e0}.plots{display:flex;flex-wrap:wrap;gap:1em}.plot .axis{stroke:#555}
.plot .pareto{fill:none;stroke:#c33;stroke-width:1.5}.plot .point{fill:#36c}.plot .point.front{fill:#c33}
.plot text{font-size:11px}.plot .title{font-size:13px;font-weight:600}.note{color:#555}
"""

_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) { r = nx - ny; } else if (isNaN(nx) !== isNaN(ny)) { r = isNaN(nx) ? 1 : -1; } else { r = x.localeCompare(y); }
        return asc ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _html(rows: list[dict[str, Any]], generated: str) -> str:
    by_protocol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["state"] in SHOWN:
            by_protocol[row["protocol"]].append(row)
    rejected = [row for row in rows if row["state"] == "rejected"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>dynbench leaderboard</title>',
           f"<style>{_STYLE}</style></head><body>", "<h1>dynbench leaderboard</h1>",
           '<p class="note">Every number below was produced by <code>dynbench leaderboard evaluate</code> from the '
           "entry's weights (sha256-verified safetensors), not by the submitter: accuracy on the protocol's test split, "
           "MACs executed per sample re-counted by the harness (controllers included), CPU p50 latency (1 thread) and "
           "the realization ratio against the static backbone. Reported numbers stand beside them; an entry whose "
           "reported accuracy is outside the tolerance is <em>marked</em>. Click a column to sort.</p>",
           f'<p class="note">{len(rows)} evaluated entries: '
           f'{sum(r["state"] == "admitted" for r in rows)} admitted, {sum(r["state"] == "marked" for r in rows)} marked, '
           f"{len(rejected)} rejected. Generated {html.escape(generated)}.</p>"]  # fmt: skip
    for protocol in sorted(by_protocol):
        group = sorted(by_protocol[protocol], key=_score)
        out.append(f'<h2 id="{html.escape(protocol)}">Protocol <code>{html.escape(protocol)}</code></h2>')
        fast = any(r["fast"] for r in group)
        if fast:
            out.append('<p class="note">Some entries were evaluated with <code>--fast</code> (a hashed 500-image subset).</p>')
        columns = _columns(group)
        out.append(f'<table class="sortable" data-protocol="{html.escape(protocol)}"><thead><tr>')
        out += [f'<th data-key="{key}" data-type="{kind}">{html.escape(label)}</th>' for label, key, kind in columns]
        out.append("</tr></thead><tbody>")
        for row in group:
            cells = "".join(f'<td data-value="{html.escape(str("" if row[key] is None else row[key]))}">{_cell(row, key)}</td>'
                            for _, key, _ in columns)  # fmt: skip
            out.append(f'<tr class="{row["state"]}" data-entry="{html.escape(row["entry_id"])}">{cells}</tr>')
        out.append("</tbody></table>")
        out.append('<div class="plots">')
        out.append(_svg_plot(group, "macs", "MACs per image (re-counted)", f"{protocol}: accuracy vs MACs"))
        out.append(_svg_plot(group, "latency_b1_ms", "CPU p50 latency, batch 1 (ms)", f"{protocol}: accuracy vs latency"))
        out.append("</div>")
    out.append("<h2 id=\"rejected\">Rejected entries</h2>")
    if rejected:
        out.append('<table class="rejected"><thead><tr><th>entry</th><th>model</th><th>protocol</th><th>reasons</th></tr></thead><tbody>')
        for row in rejected:
            reasons = "<br>".join(html.escape(r) for r in row["reasons"])
            out.append(f'<tr data-entry="{html.escape(row["entry_id"])}"><td>{html.escape(row["entry_id"])}</td>'
                       f"<td>{html.escape(row['model'])}</td><td>{html.escape(row['protocol'])}</td><td>{reasons}</td></tr>")  # fmt: skip
        out.append("</tbody></table>")
    else:
        out.append('<p class="note">None.</p>')
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)


def _markdown_cell(row: dict[str, Any], key: str) -> str:
    if key == "entry_id":
        return row["entry_id"]
    if key == "state":
        return row["state"] + (" (fast)" if row["fast"] else "")
    if key in ("latency_b1_ms", "latency_b64_ms"):
        return _num(row[key], 3)
    return html.unescape(_cell(row, key))


def _markdown(rows: list[dict[str, Any]], generated: str) -> str:
    lines = ["# dynbench leaderboard", "",
             "Numbers produced by `dynbench leaderboard evaluate` from each entry's verified weights; the "
             "reported accuracy stands beside the re-evaluated one. The sortable page with the Pareto "
             f"plots is `index.html`. Generated {generated}.", ""]  # fmt: skip
    shown = [r for r in rows if r["state"] in SHOWN]
    for protocol in sorted({r["protocol"] for r in shown}):
        group = sorted((r for r in shown if r["protocol"] == protocol), key=_score)
        columns = _columns(group)
        lines += [f"## Protocol `{protocol}`", "", "| " + " | ".join(label for label, _, _ in columns) + " |",
                  "|" + "---|" * len(columns)]  # fmt: skip
        for r in group:
            cells = [_markdown_cell(r, key) for _, key, _ in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    rejected = [r for r in rows if r["state"] == "rejected"]
    lines += ["## Rejected entries", ""]
    if rejected:
        lines += ["| entry | model | protocol | reasons |", "|---|---|---|---|"]
        lines += [f"| {r['entry_id']} | {r['model']} | {r['protocol']} | {'; '.join(r['reasons'])} |" for r in rejected]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def render(entries: str | Path, out: str | Path | None = None) -> list[Path]:
    """Validate the records under `entries` and write `index.md` and `index.html` to `out`
    (default: the folder above `entries`)."""
    import datetime as _dt

    records = [r.data for r in validate_leaderboard(record_paths(entries))]
    rows = leaderboard_rows(records)
    out = Path(out) if out is not None else Path(entries).parent
    generated = _dt.date.today().isoformat()
    written = [atomic_write_text(out / "index.md", _markdown(rows, generated)),
               atomic_write_text(out / "index.html", _html(rows, generated)),
               atomic_write_text(out / "leaderboard.json", json.dumps(rows, indent=1, sort_keys=True))]  # fmt: skip
    return written
