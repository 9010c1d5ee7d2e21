"""`dynbench leaderboard evaluate`: the harness, not the submitter, produces an entry's numbers.

An entry is fetched (a file beside its record, or an http(s) URL: size-capped, time-limited,
its sha256 checked before anything is loaded, safetensors only), built from the registry and
run through the admission rules of PROTOCOL.md §5, then evaluated: accuracy on val and test,
executed / theoretical / controller MACs per sample (the complete `functions` counter), and CPU
latency at batch 1 and 64 with the realization ratio against its static backbone.

Admission (each rule a row of `evaluation.admission`, with what it saw):

1. `deterministic`: two eval forward passes give identical predictions and decisions.
2. `batch_invariant`: each of the first samples alone gives the decisions and prediction it
   gets inside a shuffled batch.
3. `engines_agree`: the sparse engine's predictions equal the accuracy run's (masked engine)
   on the whole evaluated split.
4. `controller_counted`: a model that routes reports controller MACs (> 0), or decides only
   through marked controllers without parameters (confidence thresholds on its own outputs,
   whose MACs are already counted as the outputs').
5. `macs_declared`: the reported mean MACs lie within 1% of the recount on test.
6. `weights_and_splits`: safetensors with the recorded sha256, split hashes of the protocol
   (checked by `validate` before anything runs).
7. `accuracy_reported`: the reported test accuracy lies within the tolerance of the
   re-evaluated one; otherwise the entry is admitted as `marked`, both numbers shown.

Rules 1–6 reject; rule 7 marks. `--fast` evaluates a fixed, hashed subset of 500 images of each
split (for CI): rules 5 and 7 then use the wider tolerances below, and the record says `fast`.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.errors import DynbenchError
from benchmarks.io import atomic_write_json, canonical_json, sha256_bytes, sha256_file
from benchmarks.leaderboard.records import (
    DEFAULT_MAX_WEIGHTS_BYTES,
    WEIGHTS_FILE,
    Record,
    RecordError,
    check_schema,
    safetensors_header,
    validate_record,
)

__all__ = ["FAST_IMAGES", "TOLERANCES", "fetch_weights", "load_entry_model", "admission_checks", "evaluate_record"]

#: images per split in `--fast` mode (a fixed, hashed subset)
FAST_IMAGES = 500
#: rule 5 (relative MACs) and rule 7 (accuracy points), full and fast
TOLERANCES = {"full": {"macs": 0.01, "accuracy": 0.5}, "fast": {"macs": 0.025, "accuracy": 2.5}}
DOWNLOAD_TIMEOUT_S = 30.0
#: samples checked alone against the shuffled batch (rule 2)
INVARIANCE_SAMPLES = 16


def fetch_weights(record: Record, into: Path, *, max_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
                  timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:  # fmt: skip
    """The entry's weights as a verified local safetensors file (downloaded into `into` for a
    URL: refused above `max_bytes`, after `timeout_s` without an answer, or on a sha256 other
    than the record's, before anything is loaded)."""
    if isinstance(record.weights, Path):
        return record.weights  # validate_record checked size, sha256 and header
    url, where = record.weights, str(record.path)
    target = into / WEIGHTS_FILE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http(s) only: schema + validate)
            declared = response.headers.get("Content-Length")
            if declared is not None and int(declared) > max_bytes:
                raise RecordError(f"{where}: weights at {url} are {int(declared):,} bytes, over the limit of {max_bytes:,}")
            received = 0
            with target.open("wb") as f:
                while chunk := response.read(1 << 20):
                    received += len(chunk)
                    if received > max_bytes:
                        raise RecordError(f"{where}: weights at {url} exceed the limit of {max_bytes:,} bytes")
                    f.write(chunk)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        target.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise RecordError(f"{where}: field 'weights.url': {url} did not answer within {timeout_s:g} s ({reason})") from None
    except RecordError:
        target.unlink(missing_ok=True)
        raise
    digest = sha256_file(target)
    if digest != record.data["weights"]["sha256"]:
        target.unlink(missing_ok=True)
        raise RecordError(f"{where}: field 'weights.sha256': {record.data['weights']['sha256']} but the file at {url} has {digest}")
    safetensors_header(target)
    return target


def load_entry_model(record: Record, weights: Path) -> nn.Module:
    """The registered model with the entry's weights (safetensors, every key matching)."""
    from safetensors.torch import load_file

    from benchmarks.registry import create_model

    model_info = record.data["model"]
    try:
        model = create_model(model_info["id"], **model_info["kwargs"])
    except TypeError as exc:
        raise RecordError(f"{record.path}: field 'model.kwargs': {exc}") from None
    state = load_file(str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise RecordError(f"{record.path}: the weights do not fit model '{model_info['id']}': {' '.join(first)}") from None
    return model.eval()


# --- admission ---------------------------------------------------------------------------------


@torch.no_grad()
def _observe(model: nn.Module, images: torch.Tensor, engine: str | None) -> dict[str, Any]:
    """Predictions, logits, decisions and MACs per sample of one eval forward pass."""
    from benchmarks.cost import _logits
    from benchmarks.routing import is_dynamic, set_engine, trace

    if engine is not None and is_dynamic(model):
        set_engine(model, engine)
    # every call intercepted (no replay of static parts): a submitted model is not trusted to
    # keep its input-dependent choices inside the routing primitives
    with trace(batch_size=len(images), counter="functions") as t:
        logits = _logits(model(images))
    if logits is None or logits.dim() != 2:
        raise DynbenchError("a leaderboard model returns (N, classes) logits (a tensor, or first in a tuple)")
    decisions = {f"unit {k}": v for k, v in t.units_executed.items()}
    decisions.update({f"channels {k}": v for k, v in t.channels_kept.items()})
    return {"logits": logits.float(), "pred": logits.argmax(1), "decisions": decisions,
            "macs": t.macs_executed, "theoretical": t.macs_theoretical, "controller": t.macs_controller}  # fmt: skip


def _first_difference(a: dict[str, Any], b: dict[str, Any], rows: torch.Tensor | None = None) -> str | None:
    """Where two observations differ (predictions, then decisions), or None."""
    pick = (lambda v: v) if rows is None else (lambda v: v[rows])
    if not torch.equal(pick(a["pred"]), b["pred"]):
        i = int((pick(a["pred"]) != b["pred"]).nonzero()[0])
        return f"sample {i}: prediction {int(pick(a['pred'])[i])} vs {int(b['pred'][i])}"
    for name in sorted(set(a["decisions"]) | set(b["decisions"])):
        # a unit absent from one pass ran for none of its samples there: zeros
        x = pick(a["decisions"][name]) if name in a["decisions"] else torch.zeros_like(b["decisions"][name])
        y = b["decisions"][name] if name in b["decisions"] else torch.zeros_like(x)
        if not torch.equal(x, y):
            i = int((x != y).nonzero()[0])
            return f"sample {i}: {name} {x[i].item()} vs {y[i].item()}"
    return None


def _rule(name: str, passed: bool, detail: str, rejects: bool = True) -> dict[str, Any]:
    return {"rule": name, "passed": bool(passed), "detail": detail, "rejects": rejects}


def admission_checks(model: nn.Module, images: torch.Tensor, *, seed: int = 0) -> list[dict[str, Any]]:
    """Rules 1, 2 and 4 on a batch of `images` (sparse engine for a model that routes)."""
    from benchmarks.routing import is_dynamic

    dynamic = is_dynamic(model)
    engine = "sparse" if dynamic else None
    first = _observe(model, images, engine)
    second = _observe(model, images, engine)
    diff = _first_difference(first, second)
    rules = [_rule("deterministic", diff is None, "two eval passes identical" if diff is None else f"two eval passes differ at {diff}")]

    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    shuffled = _observe(model, images[order], engine)
    position = torch.argsort(order)  # where each original sample sits in the shuffled batch
    diff = None
    for i in range(min(INVARIANCE_SAMPLES, len(images))):
        alone = _observe(model, images[i : i + 1], engine)
        diff = _first_difference(shuffled, alone, position[i : i + 1])
        if diff is not None:
            diff = f"sample {i} alone vs in a shuffled batch of {len(images)}: {diff.split(': ', 1)[-1]}"
            break
    rules.append(_rule("batch_invariant", diff is None,
                       f"{min(INVARIANCE_SAMPLES, len(images))} samples alone = in a shuffled batch" if diff is None else diff))  # fmt: skip

    controller = float(first["controller"].float().mean())
    marked = [m for m in model.modules() if getattr(m, "_dynbench_controller", False)]
    if not dynamic:
        rules.append(_rule("controller_counted", True, "static model: no controller"))
    elif controller > 0:
        rules.append(_rule("controller_counted", True, f"controller MACs {controller:,.0f} per sample"))
    elif marked and not any(p.numel() for m in marked for p in m.parameters()):
        rules.append(_rule("controller_counted", True, f"{len(marked)} parameter-free controller(s) (e.g. confidence "
                                                       "thresholds on the model's own outputs): 0 MACs"))  # fmt: skip
    else:
        rules.append(_rule("controller_counted", False, "the model routes but reports 0 controller MACs: its gates are "
                                                        "not marked (benchmarks.routing.mark_controller)"))  # fmt: skip
    return rules


# --- evaluation --------------------------------------------------------------------------------


def _split_images(record: Record, split: str, fast: bool, data_root: Any) -> tuple[Any, dict[str, Any]]:
    from benchmarks.data import load_split
    from benchmarks.latency import choose_sample_indices

    protocol = record.data["protocol"]
    dataset = load_split(protocol["dataset"], split, data_root, options=protocol["options"] or None)
    info = {"split": split, "images": len(dataset)}
    if fast and len(dataset) > FAST_IMAGES:
        indices = choose_sample_indices(len(dataset), FAST_IMAGES, seed=0)
        dataset = torch.utils.data.Subset(dataset, indices)
        info = {"split": split, "images": FAST_IMAGES, "subset_sha256": sha256_bytes(canonical_json(indices).encode())}
    return dataset, info


def _run_split(model: nn.Module, dataset: Any, batch_size: int = 250) -> dict[str, Any]:
    """Accuracy (masked engine: the accuracy run), the sparse engine's predictions beside it,
    and the per-sample costs of the sparse run, all counted by `benchmarks.cost`."""
    from benchmarks.cost import measure_cost
    from benchmarks.engine.method import Tally
    from benchmarks.routing import is_dynamic

    dynamic = is_dynamic(model)
    # every call intercepted (replay=False): a submitted model is not trusted to keep its
    # input-dependent choices inside the routing primitives
    sparse = measure_cost(model, dataset, engine="sparse" if dynamic else None, batch_size=batch_size, replay=False)
    accuracy_run = (
        measure_cost(model, dataset, engine="masked", batch_size=batch_size, replay=False) if dynamic else sparse
    )
    predictions = accuracy_run.per_sample["prediction"]
    tally = Tally()
    tally.update(torch.tensor(predictions.to_numpy()), torch.tensor(accuracy_run.per_sample["target"].to_numpy()))
    executed = sparse.summary["macs_executed"]
    return {
        "accuracy": tally.accuracy(), "f1": tally.f1(), "images": tally.total,
        "engine_disagreements": int((sparse.per_sample["prediction"] != predictions).sum()),
        "macs_mean": executed["mean"], "macs_p50": executed["p50"], "macs_p90": executed["p90"],
        "macs_p99": executed["p99"], "macs_theoretical_mean": sparse.summary["macs_theoretical"]["mean"],
        "macs_controller_mean": sparse.summary["macs_controller"]["mean"],
    }  # fmt: skip


def _latency(model: nn.Module, record: Record, data_root: Any, macs: float) -> dict[str, Any]:
    """CPU p50 latency at batch 1 and 64 (one thread, sparse engine) and the realization ratio
    against the static backbone the registry names for the model."""
    from benchmarks.cost import count_macs
    from benchmarks.latency import (
        LatencyConfig,
        latency_sample_set,
        measure_model,
        realization_ratio,
    )
    from benchmarks.registry import create_model, get_model_spec
    from benchmarks.routing import is_dynamic
    from benchmarks.suite_latency import SUITE_TIMING, _backbone

    protocol = record.data["protocol"]
    samples = latency_sample_set(protocol["dataset"], data_root=data_root, options=protocol["options"] or None)
    config = LatencyConfig(**SUITE_TIMING)
    model_id = record.data["model"]["id"]
    rows = [m.row for m in measure_model(model, samples, model_id, config, engines=["sparse"] if is_dynamic(model) else None)]
    out: dict[str, Any] = {"device": "cpu", "threads": 1, "sample_set_sha256": rows[0]["sample_set_sha256"],
                           "environment_hash": rows[0]["environment_hash"],
                           "p50_ms": {str(r["batch_size"]): r["p50_ms"] for r in rows}, "realization_ratio": None}  # fmt: skip
    backbone = _backbone(model_id, get_model_spec(model_id).kind)
    if backbone is not None and backbone != model_id:
        accepted = inspect.signature(get_model_spec(backbone).builder).parameters
        shared = {k: v for k, v in record.data["model"]["kwargs"].items() if k in accepted}  # classes, channels, widths
        static = create_model(backbone, **shared).eval()
        static_macs = float(count_macs(static, samples.images[:1]).macs)
        static_rows = {r["batch_size"]: r for r in (m.row for m in measure_model(static, samples, backbone, config))}
        out["backbone"] = backbone
        out["realization_ratio"] = {
            str(r["batch_size"]): realization_ratio(r, static_rows[r["batch_size"]], macs, static_macs)["realization_ratio"]
            for r in rows
        }  # fmt: skip
    return out


def evaluate_record(
    path: str | Path,
    *,
    fast: bool = False,
    data_root: Any = None,
    latency: bool = True,
    max_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Validate, fetch, admit and evaluate one record; write it back with its `evaluation`,
    `status` and `dates.evaluated` filled (atomically: on an error nothing is written)."""
    from benchmarks import __version__
    from benchmarks.environment import environment_record, git_commit

    record = validate_record(path, max_weights_bytes=max_bytes)
    mode = "fast" if fast else "full"
    tolerance = TOLERANCES[mode]
    with tempfile.TemporaryDirectory(prefix="dynbench-entry-") as tmp:
        log(f"{record.entry_id}: fetching weights")
        weights = fetch_weights(record, Path(tmp), max_bytes=max_bytes, timeout_s=timeout_s)
        model = load_entry_model(record, weights)
    torch.manual_seed(0)
    splits: dict[str, Any] = {}
    subsets: dict[str, Any] = {}
    for split in ("val", "test"):
        log(f"{record.entry_id}: evaluating {split} ({mode})")
        dataset, subsets[split] = _split_images(record, split, fast, data_root)
        splits[split] = _run_split(model, dataset)
    log(f"{record.entry_id}: admission checks")
    from benchmarks.engine.batches import eval_batches

    probe = next(iter(eval_batches(_split_images(record, "test", True, data_root)[0], 64)))[0]
    rules = admission_checks(model, probe)
    test = splits["test"]
    rules.append(_rule("engines_agree", test["engine_disagreements"] == 0 and splits["val"]["engine_disagreements"] == 0,
                       f"sparse-engine predictions differ from the accuracy run on "
                       f"{test['engine_disagreements'] + splits['val']['engine_disagreements']} image(s)"))  # fmt: skip
    reported = record.data["reported"]
    gap = abs(reported["macs_mean"] - test["macs_mean"]) / test["macs_mean"]
    rules.append(_rule("macs_declared", gap <= tolerance["macs"],
                       f"declared {reported['macs_mean']:,.0f} MACs vs recount {test['macs_mean']:,.0f} "
                       f"({100 * gap:.2f}%, tolerance {100 * tolerance['macs']:g}%)"))  # fmt: skip
    rules.append(_rule("weights_and_splits", True, "safetensors, sha256 and split hashes match (validate)"))
    accuracy_gap = reported["accuracy_test"] - test["accuracy"]
    rules.append(_rule("accuracy_reported", abs(accuracy_gap) <= tolerance["accuracy"],
                       f"reported {reported['accuracy_test']:.2f} vs re-evaluated {test['accuracy']:.2f} on test "
                       f"({accuracy_gap:+.2f} points, tolerance {tolerance['accuracy']:g})", rejects=False))  # fmt: skip
    failed = [r for r in rules if not r["passed"]]
    if any(r["rejects"] for r in failed):
        state = "rejected"
    else:
        state = "marked" if failed else "admitted"
    evaluation: dict[str, Any] = {
        "fast": fast,
        "accuracy": {s: {"accuracy": v["accuracy"], "f1": v["f1"], **subsets[s]} for s, v in splits.items()},
        "cost": {k: test[k] for k in ("macs_mean", "macs_p50", "macs_p90", "macs_p99", "macs_theoretical_mean", "macs_controller_mean")}
                | {"counter": "functions", "engine": "sparse"},
        "latency": None,
        "realization_ratio": None,
        "admission": rules,
        "environment": environment_record("cpu"),
    }  # fmt: skip
    if latency and state != "rejected":
        log(f"{record.entry_id}: latency (CPU, batch 1 and 64)")
        evaluation["latency"] = _latency(model, record, data_root, test["macs_mean"])
        evaluation["realization_ratio"] = evaluation["latency"].get("realization_ratio")
    data = dict(record.data)
    data["evaluation"] = evaluation
    data["status"] = {"state": state, "reasons": [f"{r['rule']}: {r['detail']}" for r in failed]}
    data["dates"] = {**data["dates"], "evaluated": _dt.date.today().isoformat()}
    data["dynbench"] = {"version": __version__, "commit": git_commit()}
    check_schema(data, str(record.path))
    atomic_write_json(record.path, data)
    return data
