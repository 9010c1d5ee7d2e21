"""Inference goldens: fixed weights, fixed real inputs, pinned outputs (tier 1 of DESIGN §7).

A golden case is a model id with its constructor arguments, a weights file (safetensors) and
a batch of real images (the first `N_INPUTS` of a split, saved beside it), so that recording
and checking need no training. What is pinned, for each engine of a dynamic model:

* logits, within `logits_atol + logits_rtol·max|logits of the sample|` (CPU kernels differ
  in the last bits, and a logit near zero carries the rounding of its larger neighbours);
* per-sample routing decisions: the executions of every routing unit and the kept channels
  of every gated unit, exactly;
* per-sample executed / theoretical / controller MACs, exactly once the decisions match
  (counting is analytic, so it cannot depend on the kernel);
* per sample, the smallest decision margin (`benchmarks.routing.decide_threshold` and
  `decide_argmax` record it). A sample whose margin is below `margin_epsilon`, in the golden
  or in the fresh run, is "near the boundary": its decisions may flip with the last bit of a
  kernel, so a flip there is exempt. Every other decision must match.

A case's files live in one folder: `<name>.json` (the record), `<name>.safetensors` (the
weights) and `<name>.inputs.safetensors` (the images). Weights come from a seeded instance
prepared at record time (BatchNorm statistics calibrated on the inputs, controllers centred so
that they split the inputs between their choices), or, for a registered model too large to
check in, from a portable generator (numpy's PCG64 stream) whose output hash is pinned.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.errors import DynbenchError
from benchmarks.goldens.report import GoldenFileError, Mismatch, read_golden_file
from benchmarks.io import atomic_path, atomic_write_json, sha256_file

SCHEMA = 1
KIND = "dynbench-inference-golden"
N_INPUTS = 32
TOLERANCES: dict[str, float] = {
    "logits_rtol": 1e-4,  # relative to the sample's largest |logit|, on top of the absolute part
    "logits_atol": 1e-5,
    "margin_epsilon": 1e-4,  # decisions closer than this to flipping are exempt
}
VARIANCE_FLOOR = 0.01  # of calibrated BatchNorm running variances
MACS_KEYS = ("macs_executed", "macs_theoretical", "macs_controller")
WEIGHT_SOURCES = ("file", "generated")
PREPARATIONS = ("calibrate_batchnorm", "centre_controllers")


@dataclass(frozen=True)
class GoldenCase:
    """What to record: a registered model, its arguments and where its inputs come from."""

    name: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    split: str = "val"
    weights: str = "file"
    seed: int = 0
    prepare: tuple[str, ...] = PREPARATIONS

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_SOURCES:
            raise GoldenFileError(f"golden case '{self.name}': weights must be one of {WEIGHT_SOURCES}, got {self.weights!r}")
        unknown = set(self.prepare) - set(PREPARATIONS)
        if unknown:
            raise GoldenFileError(f"golden case '{self.name}': unknown preparation {sorted(unknown)} (known: {PREPARATIONS})")


def case_files(directory: str | os.PathLike, name: str) -> tuple[Path, Path, Path]:
    """(record, weights, inputs) paths of case `name` in `directory`."""
    directory = Path(directory)
    return directory / f"{name}.json", directory / f"{name}.safetensors", directory / f"{name}.inputs.safetensors"


def load_cases(path: str | os.PathLike) -> list[GoldenCase]:
    """The cases of a YAML file `{cases: {name: {model, kwargs, ...}}}`."""
    from benchmarks.config import read_yaml

    data = read_yaml(path)
    cases = data.get("cases")
    if not isinstance(cases, dict) or not cases:
        raise GoldenFileError(f"{path}: expected a non-empty mapping 'cases: {{name: {{model: ..., kwargs: ...}}}}'")
    out = []
    for name, spec in cases.items():
        if not isinstance(spec, dict) or "model" not in spec:
            raise GoldenFileError(f"{path}: case '{name}' needs at least 'model'")
        spec = dict(spec)
        if "prepare" in spec:
            spec["prepare"] = tuple(spec["prepare"])
        try:
            out.append(GoldenCase(name=str(name), **spec))
        except TypeError as exc:
            raise GoldenFileError(f"{path}: case '{name}': {exc}") from None
    return out


def case_from_config(cfg: dict[str, Any]) -> GoldenCase:
    """The inference golden of an experiment config: its model as the engine builds it (the
    dataset's classes and channels, then `model.kwargs`), on the first images of `val`."""
    from benchmarks.data import dataset_info

    options = cfg["dataset"].get("options") or {}
    info = dataset_info(cfg["dataset"]["name"], options)
    kwargs = {"num_classes": info.num_classes, "in_chans": info.input_shape[0]}
    kwargs.update(cfg["model"].get("kwargs") or {})
    return GoldenCase(
        name=cfg["name"], model=cfg["model"]["name"], kwargs=kwargs,
        dataset=cfg["dataset"]["name"], options=dict(options), seed=int((cfg.get("seeds") or [0])[0]),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Weights


def generated_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights for `model` from numpy's PCG64 stream (identical on every platform and numpy
    version): uniform with variance 1/fan_in for weight tensors, BatchNorm-like values for
    1-d scales and statistics. Integer buffers keep their values."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    state = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            state[name] = tensor.clone()
            continue
        u = rng.random(tensor.numel())
        if name.endswith("running_var"):
            values = 0.5 + u
        elif tensor.dim() > 1:
            fan_in = max(1, tensor[0].numel())
            values = (2.0 * u - 1.0) * math.sqrt(3.0 / fan_in)
        elif name.endswith("weight"):
            values = 0.75 + 0.5 * u
        else:
            values = 0.2 * (2.0 * u - 1.0)
        state[name] = torch.from_numpy(values.astype(np.float32)).reshape(tensor.shape)
    return state


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict, in key order."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Set BatchNorm running statistics to those of `images`: one train-mode pass in the engine
    the model trains in (a D2NN's nodes see only their routed rows in the sparse engine; LC-Net
    trains every row in the masked engine and the sparse one refuses train mode)."""
    from benchmarks.routing import is_dynamic, set_engine

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    dynamic = is_dynamic(model)
    model.train()
    try:
        for engine in ("sparse", "masked") if dynamic else (None,):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one batch gives its own statistics
            if engine is not None:
                set_engine(model, engine)
            try:
                with torch.no_grad():
                    model(images)
                break
            except RuntimeError:
                if engine == "masked":
                    raise
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            # a channel (nearly) constant on the inputs would divide by sqrt(eps) and amplify
            # the kernels' last-bit differences a hundredfold
            m.running_var.clamp_(min=VARIANCE_FLOOR)
        model.eval()
        if dynamic:
            set_engine(model, "sparse")


def centre_controllers(model: nn.Module, images: torch.Tensor) -> None:
    """Rescale each controller's last linear layer so that each of its outputs on `images` is
    centred between the two middle samples, and its outputs together have a unit median deviation. A random initialisation alone
    often sends every sample the same way, or leaves every score within a hair of its
    threshold; a golden of a model that never routes, or only by the last bit, pins nothing.
    A head whose last layer is all zeros (a fresh LC-Net head) first gets seeded weights."""
    controllers = [m for m in model.modules() if getattr(m, "_dynbench_controller", False)]
    model.eval()
    for controller in controllers:
        linears = [m for m in controller.modules() if isinstance(m, nn.Linear) and m.bias is not None]
        if not linears:
            continue
        last = linears[-1]
        if not bool(last.weight.detach().any()):
            # a fresh head that reads nothing (LC-Net's start exactly at its backbone): give it
            # seeded weights, as training would, so that it routes on its input
            with torch.no_grad():
                nn.init.kaiming_uniform_(last.weight, a=math.sqrt(5))
        seen: list[torch.Tensor] = []
        handle = last.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.detach()))
        try:
            with torch.no_grad():
                model(images)
        finally:
            handle.remove()
        rows = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]) if seen else None
        if rows is None or rows.shape[0] < 2:
            continue
        ordered = rows.sort(0).values
        k = rows.shape[0] // 2
        middle = (ordered[k - 1] + ordered[k]) / 2
        spread = (rows - middle).abs().median().clamp_min(1e-12)  # robust to a few outliers
        with torch.no_grad():  # out' = (out - middle) / spread
            last.weight /= spread
            last.bias.copy_((last.bias - middle) / spread)


_PREPARE: dict[str, Callable[[nn.Module, torch.Tensor], None]] = {
    "calibrate_batchnorm": calibrate_batchnorm,
    "centre_controllers": centre_controllers,
}


def build_instance(case: GoldenCase, images: torch.Tensor) -> nn.Module:
    """A fresh seeded instance of the case's model, prepared on `images` (record time only)."""
    from benchmarks.registry import create_model

    torch.manual_seed(case.seed)
    model = create_model(case.model, **case.kwargs)
    if case.weights == "generated":
        model.load_state_dict(generated_state(model, case.seed))
    else:
        for step in case.prepare:
            _PREPARE[step](model, images)
    return model.eval()


def load_inputs(case: GoldenCase) -> torch.Tensor:
    from benchmarks.data import load_split

    data = load_split(case.dataset, case.split, options=case.options or None)
    return data.images[:N_INPUTS].contiguous().clone()


# --------------------------------------------------------------------------------------------
# Observing a model


def engines_of(model: nn.Module) -> list[str]:
    from benchmarks.routing import ENGINES, is_dynamic

    return list(ENGINES) if is_dynamic(model) else ["sparse"]


def observe(model: nn.Module, images: torch.Tensor, engine: str) -> dict[str, Any]:
    """Logits, decisions, per-sample MACs and decision margins of one eval forward pass."""
    from benchmarks.routing import is_dynamic, set_engine, trace

    if is_dynamic(model):
        set_engine(model, engine)
    model.eval()
    with torch.no_grad(), trace() as t:
        logits = model(images)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise DynbenchError(f"an inference golden needs a model returning (N, classes) logits, got {type(logits).__name__}")
    margin = t.min_margin()
    return {
        "logits": [[_number(v) for v in row.tolist()] for row in logits.float().cpu()],
        **{key: getattr(t, key).tolist() for key in MACS_KEYS},
        "units": {k: v.tolist() for k, v in sorted(t.units_executed.items())},
        "channels": {k: v.tolist() for k, v in sorted(t.channels_kept.items())},
        "margin": [None if math.isinf(m) else float(m) for m in margin.tolist()],
    }


def _number(value: float) -> float | str:
    """A float for JSON: non-finite values (a D2NN output node may hold -inf) as strings."""
    return value if math.isfinite(value) else str(value)


def _environment() -> dict[str, Any]:
    import platform

    from benchmarks.environment import cpu_kernels

    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(), **cpu_kernels()}


# --------------------------------------------------------------------------------------------
# Record and verify


@dataclass
class Recording:
    """A recorded golden held in memory until `write()` (so that a batch of recordings writes
    nothing when one of them fails)."""

    case: GoldenCase
    doc: dict[str, Any]
    state: dict[str, torch.Tensor]
    images: torch.Tensor

    def write(self, directory: str | os.PathLike) -> Path:
        """Write the case's three files into `directory` (each whole, then renamed)."""
        from safetensors.torch import save_file

        record_path, weights_path, inputs_path = case_files(directory, self.case.name)
        Path(directory).mkdir(parents=True, exist_ok=True)
        with atomic_path(inputs_path) as tmp:
            save_file({"images": self.images}, str(tmp))
        if self.case.weights == "file":
            with atomic_path(weights_path) as tmp:
                save_file(self.state, str(tmp))
        self.doc["inputs"]["sha256"] = sha256_file(inputs_path)
        atomic_write_json(record_path, self.doc)
        return record_path


def observe_case(case: GoldenCase) -> Recording:
    """Prepare the case's weights and inputs and observe every engine (nothing written)."""
    images = load_inputs(case)
    model = build_instance(case, images)
    state = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": KIND,
        "name": case.name,
        "model": case.model,
        "kwargs": case.kwargs,
        "inputs": {"file": f"{case.name}.inputs.safetensors", "dataset": case.dataset, "options": case.options,
                   "split": case.split, "count": int(images.shape[0])},  # fmt: skip
        "weights": {"source": case.weights, "seed": case.seed, "sha256": state_sha256(state),
                    "file": f"{case.name}.safetensors" if case.weights == "file" else None},  # fmt: skip
        "tolerances": dict(TOLERANCES),
        "engines": {engine: observe(model, images, engine) for engine in engines_of(model)},
        "environment": _environment(),
    }
    return Recording(case, doc, state, images)


def record(case: GoldenCase, directory: str | os.PathLike) -> dict[str, Any]:
    """Observe the case and write its files into `directory`; returns the record."""
    recording = observe_case(case)
    recording.write(directory)
    return recording.doc


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A golden record, with one clear error for every way it can be unreadable."""
    hint = "re-record it with `dynbench check record`"
    doc = read_golden_file(path, KIND, SCHEMA, "dynbench inference golden", hint)
    for key, kind in (("name", str), ("model", str), ("kwargs", dict), ("inputs", dict),
                      ("weights", dict), ("tolerances", dict), ("engines", dict)):  # fmt: skip
        if not isinstance(doc.get(key), kind):
            raise GoldenFileError(f"golden file '{path}': field '{key}' is missing or not a {kind.__name__}; {hint}")
    return doc


def records_in(directory: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """The golden records in `directory` (all, or those named)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GoldenFileError(f"goldens folder '{directory}' does not exist")
    if names is not None:
        return [case_files(directory, n)[0] for n in names]
    found = sorted(p for p in directory.glob("*.json") if not p.name.endswith(".inputs.json"))
    if not found:
        raise GoldenFileError(f"goldens folder '{directory}' holds no golden records (*.json); record some with `dynbench check record`")
    return found


def _confined(directory: Path, relative: Any, name: str, what: str) -> Path:
    """A file a golden record names, inside the golden's folder (a record is data a user may
    receive from elsewhere: it must not make dynbench read outside its folder)."""
    from benchmarks.errors import OutputError
    from benchmarks.io import confined_path

    if not isinstance(relative, str) or not relative:
        raise GoldenFileError(f"golden '{name}': field '{what}.file' is missing")
    try:
        return confined_path(directory, relative)
    except OutputError:
        raise GoldenFileError(f"golden '{name}': its {what} file '{relative}' is outside the goldens folder '{directory}'") from None


def _load_tensors(path: Path, what: str, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise GoldenFileError(f"golden '{name}': its {what} file '{path}' is missing") from None
    except Exception as exc:  # safetensors raises its own types for corrupt files
        raise GoldenFileError(f"golden '{name}': its {what} file '{path}' cannot be read: {exc}") from None


def verify_record(doc: dict[str, Any], directory: str | os.PathLike) -> list[Mismatch]:
    """Rebuild the golden's model from the registry, load its weights, run its inputs through
    every pinned engine and compare. Returns the moved numbers (empty: it holds)."""
    from benchmarks.registry import create_model, is_model

    name, directory = doc["name"], Path(directory)
    if not is_model(doc["model"]):
        return [Mismatch(name, "model", doc["model"], "not registered", "the model id must still exist")]
    inputs_path = _confined(directory, doc["inputs"].get("file"), name, "inputs")
    if doc["inputs"].get("sha256") and inputs_path.is_file() and sha256_file(inputs_path) != doc["inputs"]["sha256"]:
        raise GoldenFileError(f"golden '{name}': inputs file '{inputs_path}' does not match its recorded sha256")
    images = _load_tensors(inputs_path, "inputs", name)["images"]
    try:
        model = create_model(doc["model"], **doc["kwargs"])
    except Exception as exc:  # a changed constructor signature is drift, not bad input
        return [Mismatch(name, "model", f"{doc['model']}(**kwargs)", f"{type(exc).__name__}: {exc}", "the constructor must accept the pinned arguments")]
    weights = doc["weights"]
    if weights.get("source") == "generated":
        state = generated_state(model, int(weights.get("seed", 0)))
        if state_sha256(state) != weights.get("sha256"):
            return [Mismatch(name, "generated weights sha256", weights.get("sha256"), state_sha256(state),
                             "the weight generator or the parameter shapes changed")]  # fmt: skip
    else:
        state = _load_tensors(_confined(directory, weights.get("file"), name, "weights"), "weights", name)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        return [Mismatch(name, "weights", "fit the model", detail, "the model's parameters changed shape or name")]
    tolerances = {**TOLERANCES, **doc["tolerances"]}
    mismatches: list[Mismatch] = []
    fresh_engines = engines_of(model)
    for engine, expected in doc["engines"].items():
        if engine not in fresh_engines:
            mismatches.append(Mismatch(name, f"{engine} engine", "routes", "static model", "the model no longer routes"))
            continue
        mismatches += compare_engine(name, engine, expected, observe(model, images, engine), tolerances)
    return mismatches


def _margin(values: Sequence[float | None], i: int) -> float:
    value = values[i] if i < len(values) else None
    return math.inf if value is None else float(value)


def compare_engine(
    name: str, engine: str, expected: dict[str, Any], got: dict[str, Any], tolerances: dict[str, float]
) -> list[Mismatch]:
    """Moved numbers of one engine's observation (see the module docstring for the rules)."""
    eps, rtol, atol = tolerances["margin_epsilon"], tolerances["logits_rtol"], tolerances["logits_atol"]
    exp_logits, got_logits = expected["logits"], got["logits"]
    shape = (len(exp_logits), len(exp_logits[0]) if exp_logits else 0)
    fresh_shape = (len(got_logits), len(got_logits[0]) if got_logits else 0)
    if shape != fresh_shape:
        return [Mismatch(name, f"{engine} logits shape", shape, fresh_shape, "exact")]
    out: list[Mismatch] = []
    tables = [("unit", expected["units"], got["units"]), ("channels", expected["channels"], got["channels"])]
    for i in range(shape[0]):
        margin = min(_margin(expected["margin"], i), _margin(got["margin"], i))
        flipped = []
        for label, exp_table, got_table in tables:
            for unit in sorted(set(exp_table) | set(got_table)):
                e = exp_table[unit][i] if unit in exp_table else 0
                g = got_table[unit][i] if unit in got_table else 0
                if e != g:
                    flipped.append((f"{label} {unit}", e, g))
        if flipped:
            if margin < eps:
                continue  # near the boundary: a flip here is the kernel's last bit, not the code
            shown = f"{margin:.3g}" if math.isfinite(margin) else "none recorded"
            out += [Mismatch(name, f"{engine} sample {i} {what}", e, g, f"exact; margin {shown} >= eps {eps:g}") for what, e, g in flipped]
            continue
        for key in MACS_KEYS:
            if expected[key][i] != got[key][i]:
                out.append(Mismatch(name, f"{engine} sample {i} {key}", expected[key][i], got[key][i], "exact given the decisions"))
        worst, where = 0.0, -1
        row = [float(e) for e in exp_logits[i]]
        scale = max((abs(e) for e in row if math.isfinite(e)), default=0.0)
        for j, (e, g) in enumerate(zip(row, got_logits[i], strict=True)):
            g = float(g)
            if e == g or (math.isnan(e) and math.isnan(g)):
                continue
            excess = abs(g - e) - (atol + rtol * scale)
            if not excess <= worst:  # NaN against a number, or inf against finite, too
                worst, where = excess if math.isfinite(excess) else math.inf, j
        if where >= 0:
            out.append(Mismatch(name, f"{engine} sample {i} logit {where}", exp_logits[i][where], got_logits[i][where],
                                f"|diff| <= {atol:g} + {rtol:g}*max|row|"))  # fmt: skip
    return out


def verify_folder(
    directory: str | os.PathLike, names: Iterable[str] | None = None, log: Callable[[str], None] | None = None
) -> tuple[dict[str, list[Mismatch]], dict[str, float]]:
    """Verify every golden in `directory` (or those named): (mismatches per golden, seconds).
    Every record is read (and a bad one refused) before any model runs."""
    docs = [(path, read_record(path)) for path in records_in(directory, names)]
    results, times = {}, {}
    for path, doc in docs:
        start = time.perf_counter()
        results[doc["name"]] = verify_record(doc, path.parent)
        times[doc["name"]] = time.perf_counter() - start
        if log:
            moved = len(results[doc["name"]])
            log(f"{doc['name']}: " + (f"{moved} number(s) moved" if moved else "ok"))
    return results, times


def near_boundary_count(doc: dict[str, Any]) -> dict[str, int]:
    """Per engine, how many pinned samples sit near a decision boundary (exempt from flips)."""
    eps = {**TOLERANCES, **doc["tolerances"]}["margin_epsilon"]
    return {e: sum(1 for m in obs["margin"] if m is not None and m < eps) for e, obs in doc["engines"].items()}
