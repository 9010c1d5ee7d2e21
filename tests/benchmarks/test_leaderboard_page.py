"""The rendered leaderboard page: its tables, Pareto fronts and the rejected list from the
records, and — in a real headless Chromium where one is installed — its rows, its sorting
and its plots read back from the DOM."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.io import sha256_file
from benchmarks.leaderboard.render import _pareto, render
from benchmarks.protocol import protocol_of

# entry id -> (state, re-evaluated accuracy, reported accuracy, MACs, batch-1 latency in ms)
ENTRIES = {
    "static-big": ("admitted", 95.0, 95.1, 4.0e6, 2.0),
    "dynamic-mid": ("admitted", 94.5, 94.4, 2.0e6, 1.5),
    "dynamic-bad-front": ("marked", 93.0, 96.0, 3.0e6, 1.2),
    "static-small": ("admitted", 90.0, 90.0, 1.0e6, 0.5),
    "cheater": ("rejected", 97.0, 97.0, 0.5e6, 0.2),
}


def _evaluated(root: Path, entry_id: str, state: str, acc: float, reported: float, macs: float, latency: float) -> None:
    folder = root / entry_id
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(folder / "weights.safetensors"))
    weights = folder / "weights.safetensors"
    protocol = protocol_of("digits")
    reasons = ["batch_invariant: sample 3 alone vs in a shuffled batch of 64: unit gate 1 vs 0"] if state == "rejected" else []
    if state == "marked":
        reasons = ["accuracy_reported: reported 96.00 vs re-evaluated 93.00 on test (+3.00 points, tolerance 0.5)"]
    record = {
        "schema_version": 1, "entry_id": entry_id, "title": entry_id.replace("-", " "), "authors": ["A"],
        "paper_url": "https://example.org/paper" if entry_id == "dynamic-mid" else None, "code_url": None,
        "model": {"id": "digits_cnn", "kwargs": {}, "provider": "dynbench"},
        "weights": {"url": "weights.safetensors", "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size, "format": "safetensors"},
        "protocol": {"id": protocol.id, "dataset": "digits", "options": {}, "split_sha256": dict(protocol.splits)},
        "reported": {"accuracy_val": reported, "accuracy_test": reported, "f1_test": None, "macs_mean": macs,
                     "macs_controller_mean": 0.0, "params": 10, "training_images": None, "selected_on": "val"},
        "evaluation": {"fast": False, "accuracy": {"val": {"accuracy": acc, "f1": 0.0, "split": "val", "images": 360},
                                                    "test": {"accuracy": acc, "f1": 0.0, "split": "test", "images": 360}},
                       "cost": {"macs_mean": macs, "macs_p50": macs, "macs_p90": macs, "macs_p99": macs, "macs_controller_mean": 0.0},
                       "latency": {"p50_ms": {"1": latency, "64": 8 * latency}}, "realization_ratio": None,
                       "admission": [], "environment": {}},
        "status": {"state": state, "reasons": reasons},
        "dates": {"submitted": "2026-11-30", "evaluated": "2026-11-30"}, "dynbench": {"version": "0.1.0", "commit": None},
    }  # fmt: skip
    (folder / "record.json").write_text(json.dumps(record), encoding="utf-8")


@pytest.fixture
def page(tmp_path) -> Path:
    entries = tmp_path / "leaderboard" / "entries"
    for entry_id, values in ENTRIES.items():
        _evaluated(entries, entry_id, *values)
    pending = entries / "pending-one"
    _evaluated(entries, "pending-one", "admitted", 50.0, 50.0, 1e6, 1.0)
    record = json.loads((pending / "record.json").read_text())
    record["evaluation"], record["status"] = None, {"state": "pending", "reasons": []}
    (pending / "record.json").write_text(json.dumps(record))
    render(entries)
    return tmp_path / "leaderboard" / "index.html"


def test_pareto_front_keeps_only_undominated_points():
    points = [(4.0, 95.0), (2.0, 94.5), (3.0, 93.0), (1.0, 90.0), (2.5, 94.5)]
    assert _pareto(points) == [(1.0, 90.0), (2.0, 94.5), (4.0, 95.0)]


def test_render_writes_tables_with_reported_beside_reevaluated_and_rejected_apart(page):
    markdown = (page.parent / "index.md").read_text()
    assert "| dynamic-bad-front | digits_cnn | marked | 93.00 | 96.00 |" in markdown
    shown, rejected = markdown.split("## Rejected entries")
    assert "cheater" not in shown and "pending-one" not in shown
    assert "| cheater | digits_cnn |" in rejected and "batch_invariant: sample 3 alone" in rejected
    rows = json.loads((page.parent / "leaderboard.json").read_text())
    assert sorted(r["entry_id"] for r in rows) == sorted(ENTRIES)
    html = page.read_text()
    assert "http" not in re.sub(r'href="https://example.org/paper"|xmlns="http://www.w3.org/2000/svg"', "", html)  # self-contained


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)

_CLICKS = """
<script>
function order() { return Array.prototype.map.call(document.querySelectorAll("table.sortable tbody tr"), function (r) { return r.dataset.entry; }); }
var out = {initial: order()};
var th = document.querySelector('table.sortable th[data-key="macs"]');
th.click(); out.macs_ascending = order();
th.click(); out.macs_descending = order();
document.querySelector('table.sortable th[data-key="entry_id"]').click(); out.entry_ascending = order();
out.points = Array.prototype.map.call(document.querySelectorAll("svg.plot circle"), function (c) { return [c.closest("svg").dataset.x, c.dataset.entry, c.classList.contains("front")]; });
out.fronts = document.querySelectorAll("svg.plot polyline.pareto").length;
out.rejected = Array.prototype.map.call(document.querySelectorAll("table.rejected tbody tr"), function (r) { return r.dataset.entry; });
var pre = document.createElement("pre"); pre.id = "dom-test"; pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
</script>
"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (Debian: apt-get install chromium; .ci/run installs it where apt works)")
def test_the_page_in_a_real_browser_sorts_and_plots(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body></html>", _CLICKS + "</body></html>"))
    dom = _chromium("--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="dom-test">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    out = json.loads(found.group(1).replace("&quot;", '"'))
    assert out["initial"] == ["static-big", "dynamic-mid", "dynamic-bad-front", "static-small"]  # by accuracy
    assert out["macs_ascending"] == ["static-small", "dynamic-mid", "dynamic-bad-front", "static-big"]
    assert out["macs_descending"] == out["macs_ascending"][::-1]
    assert out["entry_ascending"] == sorted(out["initial"])
    front = {(x, entry) for x, entry, on_front in out["points"] if on_front}
    assert {entry for x, entry in front if x == "macs"} == {"static-small", "dynamic-mid", "static-big"}
    assert {entry for x, entry in front if x == "latency_b1_ms"} == {"static-small", "dynamic-bad-front", "dynamic-mid", "static-big"}
    assert len(out["points"]) == 8 and out["fronts"] == 2
    assert out["rejected"] == ["cheater"]

    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1000", page.as_uri())
    assert shot.stat().st_size > 10_000


def test_the_render_command_writes_the_page(page, tmp_path):
    from benchmarks.cli import main

    out = tmp_path / "published"
    main(["leaderboard", "render", "--entries", str(page.parent / "entries"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "index.md", "leaderboard.json"]
    assert (out / "index.md").read_text().count("| dynamic-mid |") == 1
