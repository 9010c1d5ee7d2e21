"""`dynbench leaderboard evaluate`: crafted submissions that break an admission rule of
PROTOCOL.md §5 are rejected (or marked) with the rule and what it saw; weights come from a
local HTTP server on 127.0.0.1 where the case is about downloading."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from benchmarks import registry
from benchmarks.io import sha256_file
from benchmarks.leaderboard import RecordError
from benchmarks.leaderboard.evaluate import evaluate_record
from benchmarks.protocol import protocol_of
from benchmarks.routing import DynamicModule, mark_controller


class ToyRouter(DynamicModule):
    """One routed block on digits. `mode` breaks one rule: 'batch' thresholds the gate on the
    batch mean, 'random' routes at random in eval mode, 'hidden' leaves its gate unmarked,
    'engine' makes the sparse engine predict differently; 'honest' breaks none."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, mode: str = "honest"):
        super().__init__()
        self.mode = mode
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, 32), nn.ReLU())
        self.gate = nn.Linear(32, 1) if mode == "hidden" else mark_controller(nn.Linear(32, 1))
        self.block = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        score = self.gate(h)[:, 0]
        if self.mode == "batch":
            keep = score > score.mean()
        elif self.mode == "random":
            keep = torch.rand(len(h)) > 0.5
        else:
            keep = score > score.detach().new_tensor(0.0)
        h = self.route(self.block, h, keep, unit="block")
        out = self.head(h)
        return out.flip(1) if self.mode == "engine" and self.engine == "sparse" else out


MODES = ("honest", "batch", "random", "hidden", "engine")


@pytest.fixture
def toy_models(monkeypatch):
    """Register one toy per mode for this test only."""
    registry._ensure_loaded()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_OWNERS", dict(registry._OWNERS))
    for mode in MODES:
        registry.register_model(f"toy_router_{mode}", paper="test", kind="dynamic")(
            lambda num_classes=10, in_chans=1, mode=mode: ToyRouter(num_classes, in_chans, mode)
        )
    return MODES


def _weights(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "weights.safetensors"
    save_file(ToyRouter().state_dict(), str(path))
    return path


def _write(root: Path, entry_id: str, mode: str, url: str | None = None, weights: Path | None = None, **reported) -> Path:
    folder = root / entry_id
    folder.mkdir(parents=True)
    weights = weights or _weights(folder)
    protocol = protocol_of("digits")
    record = {
        "schema_version": 1, "entry_id": entry_id, "title": f"toy router ({mode})", "authors": ["A. Submitter"],
        "paper_url": None, "code_url": None,
        "model": {"id": f"toy_router_{mode}", "kwargs": {"num_classes": 10, "in_chans": 1}, "provider": "dynbench"},
        "weights": {"url": url or weights.name, "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size, "format": "safetensors"},
        "protocol": {"id": protocol.id, "dataset": "digits", "options": {}, "split_sha256": dict(protocol.splits)},
        "reported": {"accuracy_val": 10.0, "accuracy_test": 10.0, "f1_test": None, "macs_mean": 3000.0,
                     "macs_controller_mean": 32.0, "params": 3000, "training_images": None, "selected_on": "val"} | reported,
        "evaluation": None, "status": {"state": "pending", "reasons": []},
        "dates": {"submitted": "2026-11-30", "evaluated": None}, "dynbench": {"version": "0.1.0", "commit": None},
    }  # fmt: skip
    (folder / "record.json").write_text(json.dumps(record), encoding="utf-8")
    return folder / "record.json"


@pytest.fixture
def honest_numbers(toy_models, tmp_path):
    """What the harness measures for the honest toy: a submission reporting these is admitted."""
    data = evaluate_record(_write(tmp_path / "probe", "probe", "honest"), fast=True, latency=False)
    test = data["evaluation"]["accuracy"]["test"]
    return {"accuracy_test": test["accuracy"], "accuracy_val": data["evaluation"]["accuracy"]["val"]["accuracy"],
            "macs_mean": data["evaluation"]["cost"]["macs_mean"]}  # fmt: skip


def _reasons(data: dict) -> str:
    return " | ".join(data["status"]["reasons"])


def test_an_honest_entry_is_admitted(tmp_path, honest_numbers):
    data = evaluate_record(_write(tmp_path, "honest", "honest", **honest_numbers), fast=True, latency=False)
    assert data["status"] == {"state": "admitted", "reasons": []}
    assert {r["rule"] for r in data["evaluation"]["admission"]} == {
        "deterministic", "batch_invariant", "controller_counted", "engines_agree", "macs_declared",
        "weights_and_splits", "accuracy_reported",
    }  # fmt: skip
    assert data["evaluation"]["cost"]["macs_controller_mean"] == 32  # the gate: a 32 -> 1 linear


@pytest.mark.parametrize(
    ("mode", "rule", "detail"),
    [
        ("random", "deterministic", "two eval passes differ at sample"),
        ("batch", "batch_invariant", "alone vs in a shuffled batch of"),
        ("hidden", "controller_counted", "the model routes but reports 0 controller MACs"),
        ("engine", "engines_agree", "sparse-engine predictions differ from the accuracy run on"),
    ],
)
def test_an_entry_that_breaks_a_rule_is_rejected_with_the_rule(tmp_path, honest_numbers, mode, rule, detail):
    numbers = dict(honest_numbers)
    if mode == "hidden":
        numbers["macs_mean"] -= 32  # the unmarked gate's MACs are still executed
    data = evaluate_record(_write(tmp_path, mode, mode, **numbers), fast=True, latency=False)
    assert data["status"]["state"] == "rejected", _reasons(data)
    assert f"{rule}: " in _reasons(data) and detail in _reasons(data)


def test_declared_macs_5_percent_below_the_recount_are_rejected(tmp_path, honest_numbers):
    low = honest_numbers | {"macs_mean": honest_numbers["macs_mean"] * 0.95}
    data = evaluate_record(_write(tmp_path, "low-macs", "honest", **low), fast=False, latency=False)
    assert data["status"]["state"] == "rejected"
    assert "macs_declared: declared" in _reasons(data) and "(5.00%, tolerance 1%)" in _reasons(data)


def test_reported_accuracy_3_points_high_is_marked_with_both_numbers(tmp_path, honest_numbers):
    high = honest_numbers | {"accuracy_test": honest_numbers["accuracy_test"] + 3}
    path = _write(tmp_path, "high-acc", "honest", **high)
    data = evaluate_record(path, fast=True, latency=False)
    assert data["status"]["state"] == "marked"
    assert "accuracy_reported: reported" in _reasons(data) and "(+3.00 points, tolerance 2.5)" in _reasons(data)
    saved = json.loads(path.read_text())
    assert saved["reported"]["accuracy_test"] == pytest.approx(high["accuracy_test"])
    assert saved["evaluation"]["accuracy"]["test"]["accuracy"] == pytest.approx(honest_numbers["accuracy_test"])


class _Server:
    """A local HTTP server on 127.0.0.1 serving one file, or answering only after a delay."""

    def __init__(self, body: bytes, delay_s: float = 0.0):
        body_, delay = body, delay_s

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body_)))
                self.end_headers()
                self.wfile.write(body_)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.safetensors"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_weights_are_downloaded_verified_and_evaluated(tmp_path, honest_numbers):
    weights = _weights(tmp_path)
    with _Server(weights.read_bytes()) as server:
        path = _write(tmp_path / "entries", "remote", "honest", url=server.url, weights=weights, **honest_numbers)
        data = evaluate_record(path, fast=True, latency=False)
    assert data["status"]["state"] == "admitted", _reasons(data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]  # the download is not kept


@pytest.mark.parametrize("case", ["timeout", "sha256", "size"])
def test_a_bad_download_is_refused_and_nothing_written(tmp_path, honest_numbers, case):
    weights = _weights(tmp_path)
    body = weights.read_bytes()
    if case == "sha256":
        body = body[:-4] + b"\0\0\0\0"
    with _Server(body, delay_s=2.0 if case == "timeout" else 0.0) as server:
        path = _write(tmp_path / "entries", "remote", "honest", url=server.url, weights=weights, **honest_numbers)
        before = path.read_bytes()
        kwargs = {"timeout_s": 0.5} if case == "timeout" else {"max_bytes": 100} if case == "size" else {}
        message = {
            "timeout": f"field 'weights.url': {server.url} did not answer within 0.5 s",
            "sha256": "field 'weights.sha256':",
            "size": "over the limit of 100",
        }[case]
        with pytest.raises(RecordError, match=message.replace(".", r"\.").replace("(", r"\(")):
            evaluate_record(path, fast=True, latency=False, **kwargs)
    assert path.read_bytes() == before


def test_the_cli_evaluates_the_good_records_and_exits_2_naming_the_bad_one(tmp_path, honest_numbers, capsys):
    from benchmarks.cli import main

    entries = tmp_path / "entries"
    good = _write(entries, "good", "honest", **honest_numbers)
    bad = _write(entries, "bad", "honest", **honest_numbers)
    record = json.loads(bad.read_text())
    record["weights"]["sha256"] = "0" * 64
    bad.write_text(json.dumps(record))
    before = bad.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", "evaluate", "--fast", "--no-latency", str(entries)])
    output = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "field 'weights.sha256'" in output.err and "1 of 2 record(s) refused" in output.err
    assert "good: admitted" in output.out
    assert json.loads(good.read_text())["status"]["state"] == "admitted" and bad.read_bytes() == before


def test_a_parameter_free_controller_passes_the_controller_rule():
    from benchmarks.leaderboard.evaluate import admission_checks
    from benchmarks.registry import create_model

    torch.manual_seed(0)
    model = create_model("d2nn_cascade_confidence", num_classes=2, in_chans=1, thresholds=[0.6, 0.7, 0.8]).eval()
    rule = next(r for r in admission_checks(model, torch.randn(8, 1, 28, 28)) if r["rule"] == "controller_counted")
    assert rule["passed"] and "parameter-free controller" in rule["detail"]
