"""Honest latency measurement (DESIGN §4).

    from benchmarks.latency import LatencyConfig, latency_sample_set, measure_model

    samples = latency_sample_set("digits")                 # 256 seeded test images, hashed
    results = measure_model(model, samples, "digits_cnn", LatencyConfig(batch_sizes=(1, 64)))
    rows = [r.row for r in results]                        # one summary row per (engine, batch)

What "honest" means here:

* Inputs are real: a fixed, seeded subset of the dataset's *test* split (never `torch.randn`,
  whose content would make a dynamic model skip an arbitrary amount of work). The sha256 of
  the chosen indices is in every row, so two rows with the same hash timed the same images.
* Every sample is timed equally often: batches are consecutive slices of the sample set taken
  round-robin, and the timed phase always covers whole periods of that cycle. A dynamic model's
  cost depends on content, so unequal issuing would bias its latency.
* The clock is read around a *synchronized* call: `time.perf_counter_ns` on CPU, CUDA events
  (after which the host waits for the end event) on GPU. Warm-up runs until both a minimum
  number of calls and a minimum time have passed. Calls run under `torch.inference_mode()` with
  the model in eval mode, torch's intra-op threads pinned, and Python's garbage collector
  paused while timing.
* Other processes are accounted for, not hidden: a call during which this process was
  preempted (its involuntary context switches rose) is re-issued with the same batch, a few
  times at most; every attempt stays in the raw timings, and each row reports the fraction of
  kept calls still preempted and the load average.
* Raw per-call timings are kept; summaries are p10/p50/p90/p99, mean and std of those
  timings. The median is the headline: it is robust to occasional interference. On a shared
  machine p10 is steadier still (another process on a sibling core slows most calls, not
  just a few), so it is reported too.
* Every row carries the environment record (`benchmarks.environment`) and its hash.

The realization ratio (`realization_ratio`) compares a dynamic model with its static backbone:
measured speed-up divided by MACs reduction; 1.0 means every skipped MAC saved its share of
time.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import io
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import resource  # Unix: counts involuntary context switches (preemptions)
except ImportError:  # pragma: no cover - Windows
    resource = None

from benchmarks import routing as _routing
from benchmarks.data.manifest import index_list_sha256
from benchmarks.environment import environment_hash, environment_record
from benchmarks.errors import ConfigError, DynbenchError
from benchmarks.io import atomic_write_text, ensure_dir

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 8, 64, 256)
DEFAULT_SAMPLE_COUNT = 256
DEFAULT_SAMPLE_SEED = 0
#: engine label of models without routing primitives (static and pruned models)
STATIC_ENGINE = "none"
#: the sparse engine with each gated convolution's fastest real execution per batch
#: (`benchmarks.routing.set_execution(model, "fastest")`); timed only when asked for
FASTEST_ENGINE = "sparse:fastest"
#: the dynamic model's oracle: its own decisions made beforehand and the network with the
#: skipped parts removed, written out by hand (`model.oracle(x)`; see `supports_oracle`). Its
#: realization ratio beside the model's says how much of the gap is the method's and how much
#: the implementation's
ORACLE_ENGINE = "oracle"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PERCENTILES = (10, 50, 90, 99)

Clock = Callable[[], int]
"""A monotonic clock returning nanoseconds (`time.perf_counter_ns`, or a fake one in tests)."""


# --------------------------------------------------------------------------------------------
# The latency sample set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LatencySampleSet:
    """A fixed, seeded subset of a test split, in the order it is issued.

    `indices` are positions in the split; `images[i]` is the split's image `indices[i]`
    (after `input_transform`, if any). `sha256` is `index_list_sha256(indices)`, the same
    digest the split manifests use, so the set is identified by a short, recomputable hash.
    """

    dataset: str
    split: str
    seed: int
    indices: tuple[int, ...]
    images: torch.Tensor
    sha256: str
    input_transform: str = ""

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def describe(self) -> dict[str, Any]:
        """The columns that identify the sample set in a latency row."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "sample_set_size": len(self),
            "sample_set_seed": self.seed,
            "sample_set_sha256": self.sha256,
            "input_shape": "x".join(str(s) for s in self.input_shape),
            "input_transform": self.input_transform,
        }


def choose_sample_indices(available: int, count: int, seed: int) -> list[int]:
    """`count` distinct positions out of `available`, in a seeded random order.

    The order is kept (not sorted) so that consecutive batches mix classes.
    """
    if count < 1:
        raise ConfigError(f"latency sample set: count must be >= 1, got {count}")
    if count > available:
        raise ConfigError(
            f"latency sample set: asked for {count} samples but the split has only {available}"
        )
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(available, size=count, replace=False)]


def sample_set_from_images(
    images: torch.Tensor,
    dataset: str,
    *,
    split: str = "test",
    count: int = DEFAULT_SAMPLE_COUNT,
    seed: int = DEFAULT_SAMPLE_SEED,
    input_shape: Sequence[int] | None = None,
) -> LatencySampleSet:
    """Build the sample set from a split's image tensor (N×C×H×W)."""
    if images.ndim != 4:
        raise ConfigError(
            f"dataset '{dataset}' split '{split}': expected images N×C×H×W, "
            f"got shape {tuple(images.shape)}"
        )
    indices = choose_sample_indices(len(images), count, seed)
    chosen = images[torch.as_tensor(indices)].float().contiguous()
    transform = ""
    if input_shape is not None and tuple(input_shape) != tuple(chosen.shape[1:]):
        chosen, transform = fit_to_shape(chosen, tuple(input_shape))
    return LatencySampleSet(
        dataset=dataset,
        split=split,
        seed=seed,
        indices=tuple(indices),
        images=chosen,
        sha256=index_list_sha256(indices),
        input_transform=transform,
    )


def latency_sample_set(
    dataset: str,
    *,
    count: int = DEFAULT_SAMPLE_COUNT,
    seed: int = DEFAULT_SAMPLE_SEED,
    data_root: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    options: dict | None = None,
) -> LatencySampleSet:
    """The latency sample set of `dataset`: `count` seeded images of its verified test split,
    under the config's dataset `options` (e.g. pad_to)."""
    from benchmarks.data import load_split

    split = load_split(dataset, "test", data_root=data_root, options=options)
    return sample_set_from_images(
        split.images, dataset, split="test", count=count, seed=seed, input_shape=input_shape
    )


def fit_to_shape(images: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """Resize N×C×H×W images to `shape` (C, H, W): bilinear resize, grey -> RGB by repetition.

    For timing a model on real images of another resolution when its own dataset is not on
    disk. The transform is recorded in every row (`input_transform`), so such rows are never
    mistaken for measurements on the model's own data.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ConfigError(f"input shape must be three positive sizes C,H,W, got {shape}")
    c_in, h_in, w_in = images.shape[1:]
    c_out, h_out, w_out = (int(s) for s in shape)
    if c_in != c_out and c_in != 1:
        raise ConfigError(
            f"cannot fit images with {c_in} channels to {c_out}: only 1-channel images are "
            f"repeated to more channels"
        )
    out = images
    if (h_in, w_in) != (h_out, w_out):
        out = F.interpolate(out, size=(h_out, w_out), mode="bilinear", align_corners=False)
    if c_in != c_out:
        out = out.repeat(1, c_out, 1, 1)
    described = (
        f"{c_in}x{h_in}x{w_in}->{c_out}x{h_out}x{w_out} "
        f"(bilinear resize{', channel repeat' if c_in != c_out else ''})"
    )
    return out.contiguous(), described


# --------------------------------------------------------------------------------------------
# Issuing: round-robin batches, whole periods
# --------------------------------------------------------------------------------------------


def issue_period(set_size: int, batch_size: int) -> int:
    """Calls after which every sample has been issued equally often: n / gcd(n, b)."""
    if set_size < 1 or batch_size < 1:
        raise ConfigError(
            f"sample set size and batch size must be >= 1, got {set_size} and {batch_size}"
        )
    return set_size // math.gcd(set_size, batch_size)


def batch_positions(set_size: int, batch_size: int, call: int) -> list[int]:
    """Sample-set positions of call number `call`: the next `batch_size` of the cycle."""
    start = (call * batch_size) % set_size
    return [(start + j) % set_size for j in range(batch_size)]


def round_robin_batches(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """One period of batches. Slices that do not wrap are views (no copy, no gather)."""
    n = len(images)
    batches = []
    for call in range(issue_period(n, batch_size)):
        start = (call * batch_size) % n
        if start + batch_size <= n:
            batches.append(images[start : start + batch_size])
        else:
            positions = torch.as_tensor(batch_positions(n, batch_size, call))
            batches.append(images[positions].contiguous(memory_format=_memory_format(images)))
    return batches


def timed_call_count(period: int, repeats: int) -> int:
    """At least `repeats` timed calls, rounded up to whole periods (so issuing stays equal)."""
    return max(1, math.ceil(max(repeats, 1) / period)) * period


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    if images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last) and not (
        images.is_contiguous()
    ):
        return torch.channels_last
    return torch.contiguous_format


# --------------------------------------------------------------------------------------------
# Timing loop
# --------------------------------------------------------------------------------------------


def _no_sync() -> None:
    return None


def wall_timer(
    clock: Clock = time.perf_counter_ns, synchronize: Callable[[], None] = _no_sync
) -> Callable[[Callable[[], Any]], int]:
    """Time one call with `clock`, synchronizing inside the timed region."""

    def time_call(call: Callable[[], Any]) -> int:
        start = clock()
        call()
        synchronize()
        return clock() - start

    return time_call


def cuda_event_timer(device: torch.device) -> Callable[[Callable[[], Any]], int]:
    """Time one call with CUDA events on `device`'s current stream; waits for the end event."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def time_call(call: Callable[[], Any]) -> int:
        with torch.cuda.device(device):
            start.record()
            call()
            end.record()
            end.synchronize()
            return round(start.elapsed_time(end) * 1e6)  # ms -> ns

    return time_call


#: re-issuing stops once this many re-issues brought back a clean call less than this often:
#: on a saturated machine nearly every attempt is preempted, and retrying only costs time
FUTILE_RETRIES = (16, 0.1)


def involuntary_switches() -> int:
    """Involuntary context switches of this process so far (all threads): preemptions.

    A call during which the count rises was interrupted by another process; its time says
    more about the machine's load than about the model.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def _no_switches() -> int:
    return 0


@dataclass
class RawTimings:
    """What the timing loop saw: every attempt, warm-up included, in issue order.

    Each timed slot (a call in the round-robin schedule) keeps exactly one timing: its first
    attempt that was not preempted, or its last attempt when all were. Re-issuing the *same*
    batch keeps the issuing of samples equal and does not select on the time itself.
    """

    batch_size: int
    set_size: int
    period: int
    warmup_ns: list[int] = field(default_factory=list)
    warmup_preempted: list[int] = field(default_factory=list)
    warmup_elapsed_ns: int = 0
    #: every timed-phase attempt: (slot, attempt, time_ns, preemptions)
    attempts: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: the kept timing of each slot and its preemption count
    timed_ns: list[int] = field(default_factory=list)
    timed_preempted: list[int] = field(default_factory=list)
    #: how many times each sample-set position was issued in the kept timings
    issues: list[int] = field(default_factory=list)
    #: the slot from which re-issuing stopped because it was futile (None: it never stopped)
    retries_stopped_at: int | None = None
    #: timing stopped at the time cap (`max_time_s`) before `repeats` calls
    capped: bool = False

    @property
    def warmup_calls(self) -> int:
        return len(self.warmup_ns)

    @property
    def retried_calls(self) -> int:
        return len(self.attempts) - len(self.timed_ns)

    @property
    def preempted_fraction(self) -> float:
        """Fraction of kept timings that were still preempted (0 on a quiet machine)."""
        return sum(p > 0 for p in self.timed_preempted) / max(1, len(self.timed_preempted))

    def first_positions(self) -> list[int]:
        """Sample-set position of each timed slot's first sample."""
        return [(c * self.batch_size) % self.set_size for c in range(len(self.timed_ns))]


def time_calls(
    fn: Callable[[torch.Tensor], Any],
    batches: Sequence[torch.Tensor],
    *,
    batch_size: int,
    set_size: int,
    repeats: int,
    warmup_iters: int,
    warmup_s: float,
    min_time_s: float = 0.0,
    max_time_s: float | None = None,
    retries: int = 0,
    clock: Clock = time.perf_counter_ns,
    synchronize: Callable[[], None] = _no_sync,
    timer: Callable[[Callable[[], Any]], int] | None = None,
    preemptions: Callable[[], int] | None = None,
    progress: bool | None = False,
    desc: str = "",
) -> RawTimings:
    """Warm up, then time whole periods of round-robin `batches` through `fn`.

    Warm-up issues batches until at least `warmup_iters` calls AND `warmup_s` seconds (on
    `clock`, synchronized) have passed. The timed phase starts again at the first batch and
    runs whole periods until at least `repeats` calls and `min_time_s` seconds are done.
    A timed call that `preemptions` (default: the process's involuntary context switches)
    shows was interrupted is re-issued, same batch, up to `retries` times, until re-issuing
    proves futile (see `FUTILE_RETRIES`).
    `max_time_s` caps a slow model's measurement: warm-up stops there after one call, and the
    timed phase after the first whole period that reaches it (the timings then say `capped`).
    `timer` times one call (default: `clock` around the call and `synchronize`).
    """
    period = len(batches)
    if period != issue_period(set_size, batch_size):
        raise ValueError(f"expected one period ({issue_period(set_size, batch_size)}) of batches")
    if repeats < 1 or retries < 0 or warmup_iters < 0 or warmup_s < 0 or min_time_s < 0:
        raise ConfigError(
            f"repeats must be >= 1 and retries, warm-up and min time >= 0 "
            f"(got repeats={repeats}, retries={retries}, warmup_iters={warmup_iters}, "
            f"warmup_s={warmup_s}, min_time_s={min_time_s})"
        )
    time_call = timer or wall_timer(clock, synchronize)
    switches = preemptions or (involuntary_switches if resource is not None else _no_switches)
    raw = RawTimings(batch_size=batch_size, set_size=set_size, period=period)

    def attempt(batch: torch.Tensor) -> tuple[int, int]:
        before = switches()
        ns = time_call(lambda: fn(batch))
        return ns, switches() - before

    # Warm-up: by count and by time, both (unless the cap comes first).
    warmup_goal_ns = round(warmup_s * 1e9)
    cap_ns = None if max_time_s is None else round(max_time_s * 1e9)
    start = clock()
    call = 0
    while call < warmup_iters or clock() - start < warmup_goal_ns:
        if cap_ns is not None and call and clock() - start >= cap_ns:
            break
        ns, preempted = attempt(batches[call % period])
        raw.warmup_ns.append(ns)
        raw.warmup_preempted.append(preempted)
        call += 1
    raw.warmup_elapsed_ns = clock() - start

    # Timed phase: whole periods only.
    planned = timed_call_count(period, repeats)
    min_time_ns = round(min_time_s * 1e9)
    bar = _progress_bar(planned, progress, desc)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is the harness's noise, not the model's
    try:
        start = clock()
        call = retried = clean = 0
        while call < planned:
            batch = batches[call % period]
            for tries in range(retries + 1 if raw.retries_stopped_at is None else 1):
                ns, preempted = attempt(batch)
                raw.attempts.append((call, tries, ns, preempted))
                if tries:
                    retried += 1
                    clean += not preempted
                if not preempted:
                    break
            stop = retried >= FUTILE_RETRIES[0] and clean < retried * FUTILE_RETRIES[1]
            if stop and raw.retries_stopped_at is None:
                raw.retries_stopped_at = call + 1  # the machine is saturated: stop paying 4×
            raw.timed_ns.append(ns)
            raw.timed_preempted.append(preempted)
            call += 1
            if cap_ns is not None and call < planned and call % period == 0 and clock() - start >= cap_ns:
                raw.capped = True
                break
            if call == planned and clock() - start < min_time_ns:
                planned += period  # keep going, one whole period at a time
                if bar is not None:
                    bar.total = planned
            if bar is not None:
                bar.update(1)
    finally:
        if gc_was_enabled:
            gc.enable()
        if bar is not None:
            bar.close()
    issues = [0] * set_size
    for c in range(len(raw.timed_ns)):
        for position in batch_positions(set_size, batch_size, c):
            issues[position] += 1
    raw.issues = issues
    return raw


def _progress_bar(total: int, progress: bool | None, desc: str):
    if progress is False:
        return None
    from tqdm.auto import tqdm

    # progress=None: show the bar only on a terminal (tqdm's disable=None rule)
    disable = None if progress is None else False
    return tqdm(total=total, desc=desc, unit="call", leave=False, disable=disable)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def summarize_times(times_ns: Sequence[int]) -> dict[str, float]:
    """count, mean, std (sample, ddof=1; 0 for one call), min, max, p10/p50/p90/p99, in ms.

    Percentiles interpolate linearly between order statistics (numpy's default, Hyndman &
    Fan type 7), so p50 of an even count is the mean of the two middle values.
    """
    if len(times_ns) == 0:
        raise ValueError("no timings to summarize")
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    summary = {
        "count": int(ms.size),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }
    for q, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True):
        summary[f"p{q}_ms"] = float(value)
    return summary


def realization_ratio(
    dynamic: Mapping[str, Any],
    static: Mapping[str, Any],
    dynamic_macs: float,
    static_macs: float,
    statistic: str = "p50_ms",
) -> dict[str, float]:
    """Measured speed-up of `dynamic` over `static` divided by their MACs reduction.

    `dynamic` and `static` are latency summaries (rows of `measure_model` or
    `summarize_times`) at the same batch size; `dynamic_macs` is the dynamic model's mean
    executed MACs per sample (controller included) and `static_macs` the backbone's. 1.0 means
    time fell exactly in proportion to MACs; below 1.0, skipped MACs saved less than their share
    (routing overhead, smaller kernels running less efficiently); above 1.0, more.
    """
    for name, value in (("dynamic_macs", dynamic_macs), ("static_macs", static_macs)):
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    for name, summary in (("dynamic", dynamic), ("static", static)):
        value = summary.get(statistic)
        if value is None or not value > 0:
            raise ValueError(f"{name} latency summary has no positive '{statistic}': {value}")
    if dynamic.get("batch_size") != static.get("batch_size"):
        raise ValueError(
            f"latency summaries are at different batch sizes "
            f"({dynamic.get('batch_size')} and {static.get('batch_size')})"
        )
    speedup = static[statistic] / dynamic[statistic]
    macs_reduction = static_macs / dynamic_macs
    return {
        "speedup": speedup,
        "macs_reduction": macs_reduction,
        "realization_ratio": speedup / macs_reduction,
    }


# --------------------------------------------------------------------------------------------
# Measuring a model
# --------------------------------------------------------------------------------------------


#: the largest batch the harness builds (in memory, from the sample set)
MAX_BATCH = 8192


@dataclass(frozen=True)
class LatencyConfig:
    """How to measure. Defaults are tuned to give a repeatable median on a busy 2-core CPU.

    `threads` pins torch's intra-op threads (None keeps torch's current setting, which is
    then recorded). `repeats` is the minimum number of timed calls, rounded up to whole
    issue periods (at batch 1 over 256 samples, that is 256 calls). Timing continues by whole
    periods until `min_time_s` has also passed; `max_time_s` (None: no cap) stops a slow model
    earlier, after whole periods (its rows say `time_capped`). A timed call during which another process
    preempted this one is re-issued (same batch) up to `retries` times; every attempt is kept
    in the raw timings and the rows report the fraction still preempted.
    """

    device: str = "cpu"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: int | None = 1
    repeats: int = 50
    warmup_iters: int = 10
    warmup_s: float = 1.0
    min_time_s: float = 2.0
    max_time_s: float | None = None
    retries: int = 3
    dtype: str = "float32"
    channels_last: bool = False
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if max(self.batch_sizes) > MAX_BATCH:
            raise ConfigError(f"batch size {max(self.batch_sizes):,} is too large: at most {MAX_BATCH:,} (a batch is built in memory from the sample set)")
        for name in ("warmup_s", "min_time_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number of seconds >= 0, got {value}")
        for name in ("repeats", "warmup_iters", "retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"compile mode must be one of {', '.join(COMPILE_MODES)}, got '{self.compile_mode}'"
            )
        if self.repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {self.repeats}")
        if self.max_time_s is not None and not (math.isfinite(self.max_time_s) and self.max_time_s > 0):
            raise ConfigError(f"--max-time-s must be a positive number of seconds, got {self.max_time_s}")
        if min(self.warmup_iters, self.warmup_s, self.min_time_s, self.retries) < 0:
            raise ConfigError("warm-up count, warm-up time, minimum time and retries must be >= 0")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device '{self.device}': {exc}") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got '{self.device}'")


@dataclass
class LatencyMeasurement:
    """One (model, engine, batch size) measurement: its summary row and raw timings."""

    row: dict[str, Any]
    raw: RawTimings

    def raw_rows(self) -> list[dict[str, Any]]:
        """Every attempt as a tidy row: warm-up calls, re-issued (not kept) and kept timings."""
        keys = {k: self.row[k] for k in ("model", "engine", "device", "batch_size")}
        keys["sample_set_sha256"] = self.row["sample_set_sha256"]
        keys["environment_hash"] = self.row["environment_hash"]
        n, b = self.raw.set_size, self.raw.batch_size
        rows = [
            {**keys, "phase": "warmup", "call": i, "attempt": 0, "first_sample": (i * b) % n,
             "time_ns": t, "preemptions": p, "kept": False}
            for i, (t, p) in enumerate(
                zip(self.raw.warmup_ns, self.raw.warmup_preempted, strict=True)
            )
        ]
        # a slot keeps its last attempt: the first clean one, or the last try
        last = {call: attempt for call, attempt, _, _ in self.raw.attempts}
        rows += [
            {**keys, "phase": "timed", "call": call, "attempt": attempt,
             "first_sample": (call * b) % n, "time_ns": t, "preemptions": p,
             "kept": attempt == last[call]}
            for call, attempt, t, p in self.raw.attempts
        ]
        return rows


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count for the block; yield the count in force."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def is_dynamic(model: nn.Module) -> bool:
    """True when the model routes through benchmarks.routing primitives."""
    return _routing.is_dynamic(model)


def supports_oracle(model: nn.Module) -> bool:
    """True when a dynamic model provides an oracle: `model.oracle(x)` makes its decisions
    for the batch `x` and returns a function that computes the same outputs with those
    decisions fixed, the skipped parts removed and no controllers (plain PyTorch), or None
    where it has none for such a batch (e.g. a D2NN for more than one image)."""
    return is_dynamic(model) and callable(getattr(model, "oracle", None))


def model_engines(model: nn.Module, engines: Sequence[str] | None = None) -> tuple[str, ...]:
    """Engines to time: both (or those asked for, `sparse:fastest` and `oracle` included) for
    dynamic models, 'none' for static ones."""
    if not is_dynamic(model):
        return (STATIC_ENGINE,)
    known = (*_routing.ENGINES, FASTEST_ENGINE, ORACLE_ENGINE)
    chosen = tuple(engines) if engines else tuple(_routing.ENGINES)
    for engine in chosen:
        if engine not in known:
            raise ConfigError(f"unknown engine '{engine}'; expected one of {', '.join(known)}")
    if ORACLE_ENGINE in chosen and not supports_oracle(model):
        raise ConfigError(
            f"{type(model).__name__} has no oracle (a model provides one with an `oracle(x)` "
            "method; see docs/latency.md)"
        )
    return chosen


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine was (None where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync


def prepare_model(model: nn.Module, engine: str, config: LatencyConfig) -> Callable:
    """Eval mode, device, dtype, memory format, engine, then (optionally) torch.compile."""
    device = torch.device(config.device)
    model.eval()
    if engine != STATIC_ENGINE:
        _routing.set_engine(model, "masked" if engine == "masked" else "sparse")
        _routing.set_execution(model, "fastest" if engine == FASTEST_ENGINE else "exact")
    model.to(device=device, dtype=DTYPES[config.dtype])
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.compile_mode is not None:
        return torch.compile(model, mode=config.compile_mode)
    return model


def measure_model(
    model: nn.Module,
    samples: LatencySampleSet,
    model_name: str,
    config: LatencyConfig = LatencyConfig(),
    *,
    engines: Sequence[str] | None = None,
    clock: Clock = time.perf_counter_ns,
    synchronize: Callable[[], None] | None = None,
    preemptions: Callable[[], int] | None = None,
    progress: bool | None = False,
    extra: Mapping[str, Any] | None = None,
) -> list[LatencyMeasurement]:
    """Time `model` on `samples` at every batch size of `config`, for each engine.

    Static models are timed once per batch size (engine 'none'); dynamic ones in both
    engines unless `engines` narrows it. The model is put in eval mode and moved to the
    device and dtype in place. `clock`, `synchronize` and `preemptions` are injectable for
    tests; on CUDA the per-call time comes from CUDA events. `extra` columns are added to
    every row.
    """
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DynbenchError("device 'cuda' was asked for, but torch sees no CUDA device")
    sync = synchronize or _synchronizer(device)
    inputs = samples.images.to(device=device, dtype=DTYPES[config.dtype])
    if config.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    results: list[LatencyMeasurement] = []
    with pinned_threads(config.threads) as threads:
        env = environment_record(
            device,
            dtype=config.dtype,
            channels_last=config.channels_last,
            compile_mode=config.compile_mode,
            threads=threads,
        )
        timed_engines = model_engines(model, engines)
        if FASTEST_ENGINE in timed_engines:  # the per-layer choice's cost model, measured here
            env["execution_costs"] = calibrated_execution_costs(device)
        env_hash = environment_hash(env)
        events = device.type == "cuda" and synchronize is None
        for engine in timed_engines:
            if engine == ORACLE_ENGINE and config.compile_mode is not None:
                raise ConfigError("the oracle runs eagerly: time it without --compile")
            runnable = prepare_model(model, engine, config)
            for batch_size in config.batch_sizes:
                batches = round_robin_batches(inputs, int(batch_size))
                timer = cuda_event_timer(device) if events else None
                load_start = load_average()
                with torch.inference_mode():
                    _check_runs(runnable, batches[0], model_name, samples, config.compile_mode)
                    timed = runnable
                    if engine == ORACLE_ENGINE:
                        timed = oracle_runnable(model, batches, model_name)
                        if timed is None:  # no oracle at this batch size: no row
                            continue
                    raw = time_calls(
                        timed,
                        batches,
                        batch_size=int(batch_size),
                        set_size=len(samples),
                        repeats=config.repeats,
                        warmup_iters=config.warmup_iters,
                        warmup_s=config.warmup_s,
                        min_time_s=config.min_time_s,
                        max_time_s=config.max_time_s,
                        retries=config.retries,
                        clock=clock,
                        synchronize=sync,
                        timer=timer,
                        preemptions=preemptions,
                        progress=progress,
                        desc=f"{model_name} {engine} b{batch_size}",
                    )
                load = (load_start, load_average())
                row = _summary_row(
                    model_name, engine, config, samples, raw, threads, env, env_hash, load
                )
                if extra:
                    row.update(extra)
                results.append(LatencyMeasurement(row=row, raw=raw))
    return results


def oracle_runnable(
    model: nn.Module, batches: Sequence[torch.Tensor], model_name: str = "model"
) -> Callable[[torch.Tensor], Any] | None:
    """`fn(batch)` for the timed batches that runs the model's oracle for that batch (its
    decisions made here, before timing), or None where the model has no oracle for batches of
    this size. Each oracle must reproduce the model's output on its batch."""
    prepared: dict[int, Callable[[], Any]] = {}
    for batch in batches:
        forward = model.oracle(batch)
        if forward is None:
            return None
        if id(batch) == id(batches[0]):
            expected, got = model(batch), forward()
            # float16/bfloat16 (autocast): the oracle's own kernel order moves the last bits
            tol = 1e-3 if expected.dtype in (torch.float32, torch.float64) else 5e-2
            if not torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol / 10, equal_nan=True):
                raise DynbenchError(
                    f"the oracle of '{model_name}' does not reproduce the model's output (largest "
                    f"difference {float((got.float() - expected.float()).abs().nan_to_num().max()):.3g}): "
                    "an oracle must compute the model's function with its decisions fixed"
                )
        prepared[id(batch)] = forward
    return lambda batch: prepared[id(batch)]()


_CALIBRATED: dict[str, dict[str, Any]] = {}


def calibrated_execution_costs(device: torch.device | str) -> dict[str, Any]:
    """The per-layer execution choice's cost model for `device`, calibrated on it once per
    process (`benchmarks.routing.calibrate_executions`, about a second) and installed; every
    later measurement in the process uses and records the same one."""
    device = torch.device(device)
    cached = _CALIBRATED.get(str(device))
    if cached is None or _routing.execution_costs(device.type).as_dict() != cached:  # replaced since
        cached = _CALIBRATED[str(device)] = _routing.calibrate_executions(device).as_dict()
    return cached


def _check_runs(
    fn: Callable, batch: torch.Tensor, model_name: str, samples: LatencySampleSet,
    compile_mode: str | None = None,
) -> None:
    """Fail with one clear message (not a stack of conv errors) when the first call fails."""
    try:
        fn(batch)
    except (RuntimeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if compile_mode is not None:
            raise DynbenchError(
                f"model '{model_name}' failed under torch.compile(mode='{compile_mode}'): "
                f"{first_line}. Run without --compile to time it eagerly."
            ) from exc
        raise DynbenchError(
            f"model '{model_name}' failed on latency inputs of shape "
            f"{'x'.join(map(str, samples.input_shape))} from dataset '{samples.dataset}': "
            f"{first_line}. Use the model's dataset (--dataset) or fit the images to its "
            f"input with --input-shape C,H,W."
        ) from exc


def _summary_row(
    model_name: str,
    engine: str,
    config: LatencyConfig,
    samples: LatencySampleSet,
    raw: RawTimings,
    threads: int,
    env: dict[str, Any],
    env_hash: str,
    load: tuple[float | None, float | None],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": model_name,
        "engine": engine,
        "device": config.device,
        "batch_size": raw.batch_size,
        "dtype": config.dtype,
        "channels_last": config.channels_last,
        "compile_mode": config.compile_mode or "",
        "threads": threads,
        **samples.describe(),
        "retries": config.retries,
        "load_1m_start": load[0],
        "load_1m_end": load[1],
        **_timing_fields(raw),
        "environment_hash": env_hash,
    }
    row.update({f"env_{k}": v for k, v in env.items()})
    return row


def _timing_fields(raw: RawTimings) -> dict[str, Any]:
    """The columns computed from the raw timings."""
    stats = summarize_times(raw.timed_ns)
    issues = set(raw.issues)
    if len(issues) != 1:  # cannot happen with whole periods; a row must never hide it
        raise AssertionError(f"unequal issuing of latency samples: counts {sorted(issues)}")
    b = raw.batch_size
    return {
        "warmup_calls": raw.warmup_calls,
        "warmup_s": raw.warmup_elapsed_ns / 1e9,
        "timed_calls": len(raw.timed_ns),
        "issues_per_sample": issues.pop(),
        "retried_calls": raw.retried_calls,
        "retries_stopped_at": -1 if raw.retries_stopped_at is None else raw.retries_stopped_at,
        "time_capped": raw.capped,
        "preempted_fraction": raw.preempted_fraction,
        **stats,
        "per_sample_p50_ms": stats["p50_ms"] / b,
        "per_sample_mean_ms": stats["mean_ms"] / b,
        "throughput_sps": 1e3 * b / stats["mean_ms"] if stats["mean_ms"] > 0 else float("nan"),
    }


def merge_raw(parts: Sequence[RawTimings]) -> RawTimings:
    """Concatenate the timings of several runs of one (model, engine, batch size).

    Each part covers whole issue periods, so the merged timings do too, and a timed slot's
    index keeps naming the same samples.
    """
    first = parts[0]
    if any((p.batch_size, p.set_size) != (first.batch_size, first.set_size) for p in parts):
        raise ValueError("can only merge timings of one batch size over one sample set")
    merged = RawTimings(batch_size=first.batch_size, set_size=first.set_size, period=first.period)
    offset = 0
    for part in parts:
        merged.warmup_ns += part.warmup_ns
        merged.warmup_preempted += part.warmup_preempted
        merged.warmup_elapsed_ns += part.warmup_elapsed_ns
        merged.attempts += [(c + offset, a, t, q) for c, a, t, q in part.attempts]
        merged.timed_ns += part.timed_ns
        merged.timed_preempted += part.timed_preempted
        if merged.retries_stopped_at is None and part.retries_stopped_at is not None:
            merged.retries_stopped_at = part.retries_stopped_at + offset
        offset += len(part.timed_ns)
        merged.capped = merged.capped or part.capped
    merged.issues = [sum(counts) for counts in zip(*(p.issues for p in parts), strict=True)]
    return merged


def merge_measurements(parts: Sequence[LatencyMeasurement]) -> LatencyMeasurement:
    """One measurement from several rounds of the same (model, engine, batch size)."""
    raw = merge_raw([p.raw for p in parts])
    row = {**parts[0].row, **_timing_fields(raw), "load_1m_end": parts[-1].row["load_1m_end"]}
    return LatencyMeasurement(row=row, raw=raw)


# --------------------------------------------------------------------------------------------
# Realization: measured speed-up over the static backbone vs MACs reduction
# --------------------------------------------------------------------------------------------


def mean_executed_macs(
    model: nn.Module, samples: LatencySampleSet, engine: str = STATIC_ENGINE
) -> float:
    """Mean executed MACs per sample (controller included) over the latency sample set.

    Counted by `benchmarks.cost` on the very images that are timed, in `engine` (for a
    dynamic model); the masked engine's executed MACs are its full cost. `sparse:fastest`
    is counted as `sparse`: its realization ratio divides its speed-up by the method's MACs
    reduction (the per-layer choice may compute more than that, to be faster; its traces
    record what it ran). So is the oracle: the same decisions, the skipped parts removed.
    """
    from benchmarks.cost import measure_cost

    if engine in (FASTEST_ENGINE, ORACLE_ENGINE):
        engine = "sparse"
    result = measure_cost(
        model, samples.images, engine=None if engine == STATIC_ENGINE else engine, batch_size=64
    )
    return float(result.summary["macs_executed"]["mean"])


def realization_rows(
    dynamic: Sequence[Mapping[str, Any]],
    static: Sequence[Mapping[str, Any]],
    dynamic_macs: Mapping[str, float],
    static_macs: float,
    statistic: str = "p50_ms",
) -> list[dict[str, Any]]:
    """One realization row per dynamic (engine, batch size) row with a static row of that size.

    `dynamic_macs` maps engine -> mean executed MACs per sample; the ratio uses `statistic`
    (the median by default, which on a shared machine is the stable one). Where the oracle
    was timed at that batch size, every row also carries its `oracle_realization_ratio`.
    """
    by_batch = {row["batch_size"]: row for row in static}
    oracle_rows = {row["batch_size"]: row for row in dynamic if row["engine"] == ORACLE_ENGINE}
    rows = []
    for row in dynamic:
        base = by_batch.get(row["batch_size"])
        if base is None:
            continue
        macs = dynamic_macs[row["engine"]]
        ratio = realization_ratio(row, base, macs, static_macs, statistic)
        oracle = oracle_rows.get(row["batch_size"])
        if oracle is not None:
            ratio["oracle_realization_ratio"] = realization_ratio(
                oracle, base, dynamic_macs[ORACLE_ENGINE], static_macs, statistic
            )["realization_ratio"]
        rows.append(
            {
                "model": row["model"],
                "baseline": base["model"],
                "engine": row["engine"],
                "device": row["device"],
                "batch_size": row["batch_size"],
                "statistic": statistic,
                "latency_ms": row[statistic],
                "baseline_latency_ms": base[statistic],
                "macs": macs,
                "baseline_macs": static_macs,
                **ratio,
                "threads": row["threads"],
                "sample_set_sha256": row["sample_set_sha256"],
                "preempted_fraction": max(row["preempted_fraction"], base["preempted_fraction"]),
                "load_1m_start": row["load_1m_start"],
                "environment_hash": row["environment_hash"],
            }
        )
    return rows


@dataclass
class RealizationResult:
    dynamic: list[LatencyMeasurement]
    static: list[LatencyMeasurement]
    rows: list[dict[str, Any]]
    dynamic_macs: dict[str, float]
    static_macs: float


def measure_realization(
    dynamic_model: nn.Module,
    static_model: nn.Module,
    samples: LatencySampleSet,
    dynamic_name: str,
    static_name: str,
    config: LatencyConfig = LatencyConfig(),
    *,
    engines: Sequence[str] | None = None,
    rounds: int = 4,
    oracle: bool = True,
    progress: bool | None = False,
    **timing: Any,
) -> RealizationResult:
    """Time a dynamic model and its static backbone on the same samples; their ratio rows.

    MACs come from `benchmarks.cost` on the sample set. For each batch size the models are
    timed in `rounds` interleaved rounds (static first in even rounds, last in odd ones), each
    covering whole issue periods, so that a change in the machine's load during the
    measurement falls on both sides of the ratio. Warm-up runs in full before the first round
    and briefly (2 calls) before the others. With `oracle` (the default), a model that
    provides an oracle (`supports_oracle`) has it timed too, in the same rounds, unless
    compiled. `timing` goes to `measure_model` (fake clocks).
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if is_dynamic(static_model):
        raise ConfigError(f"the baseline '{static_name}' is a dynamic model; it must be static")
    chosen = model_engines(dynamic_model, engines)
    if oracle and supports_oracle(dynamic_model) and config.compile_mode is None and ORACLE_ENGINE not in chosen:
        chosen = (*chosen, ORACLE_ENGINE)
    with pinned_threads(config.threads):
        dynamic_macs = {e: mean_executed_macs(dynamic_model, samples, e) for e in chosen}
        static_macs = mean_executed_macs(static_model, samples)
    subjects = [(static_model, static_name, STATIC_ENGINE, static_macs)] + [
        (dynamic_model, dynamic_name, e, dynamic_macs[e]) for e in chosen
    ]
    dyn: list[LatencyMeasurement] = []
    stat: list[LatencyMeasurement] = []
    for batch_size in config.batch_sizes:
        parts: dict[int, list[LatencyMeasurement]] = {i: [] for i in range(len(subjects))}
        for r in range(rounds):
            one = dataclasses.replace(
                config,
                batch_sizes=(batch_size,),
                repeats=math.ceil(config.repeats / rounds),
                min_time_s=config.min_time_s / rounds,
                max_time_s=None if config.max_time_s is None else config.max_time_s / rounds,
                warmup_iters=config.warmup_iters if r == 0 else min(config.warmup_iters, 2),
                warmup_s=config.warmup_s if r == 0 else 0.0,
            )
            order = range(len(subjects)) if r % 2 == 0 else reversed(range(len(subjects)))
            for i in order:
                model, name, engine, macs = subjects[i]
                parts[i] += measure_model(
                    model, samples, name, one,
                    engines=None if engine == STATIC_ENGINE else (engine,),
                    progress=progress, extra={"macs_per_sample": macs, "rounds": rounds},
                    **timing,
                )
        stat.append(merge_measurements(parts[0]))
        dyn += [merge_measurements(parts[i]) for i in range(1, len(subjects)) if parts[i]]
    rows = realization_rows([m.row for m in dyn], [m.row for m in stat], dynamic_macs, static_macs)
    return RealizationResult(dyn, stat, rows, dynamic_macs, static_macs)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_rows(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows as a CSV, atomically (columns: the union of the rows' keys, in first-seen order)."""
    return atomic_write_text(path, _rows_csv(rows))


def raw_file_name(row: Mapping[str, Any]) -> str:
    """`MODEL__ENGINE__bBATCH.csv`, with anything but letters, digits, '.', '-', '_' replaced."""
    name = f"{row['model']}__{row['engine']}__b{row['batch_size']}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".csv"


def write_measurements(
    out: str | os.PathLike,
    measurements: Sequence[LatencyMeasurement],
    summary_name: str = "latency_summary.csv",
) -> Path:
    """Raw CSVs first, then the summary (each atomically): a summary names only files that exist."""
    ensure_dir(Path(out) / "raw")
    rows = []
    for m in measurements:
        name = raw_file_name(m.row)
        atomic_write_text(Path(out) / "raw" / name, _rows_csv(m.raw_rows()))
        rows.append({**m.row, "raw_file": f"raw/{name}"})
    return atomic_write_text(Path(out) / summary_name, _rows_csv(rows))


SUMMARY_COLUMNS = (
    "model", "engine", "device", "batch_size", "count", "p50_ms", "p90_ms", "p99_ms",
    "mean_ms", "std_ms", "per_sample_p50_ms", "throughput_sps",
)
"""The columns of the printed summary table (the CSV keeps every column)."""


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS
) -> str:
    """A plain fixed-width text table of `rows`."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)
