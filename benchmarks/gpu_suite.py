"""The GPU latency suite: one prepared run that measures what the suite's models do on a GPU.

    python -m benchmarks.gpu_suite --device cuda --out results/latency/gpu
    python -m benchmarks.gpu_suite --device cpu --small --out /tmp/gpu-suite   # a dry run

For each pair of a dynamic model and the static network it is measured against (LC-Net L, C
and LC on CIFAR ResNet-56; the D2NN cascade against its four stages alone; SkipNet, BlockDrop
and ConvNet-AIG on ResNet-110, FBS and early exit on ResNet-56), at batch 1, 64 and 256, in
both engines and with the per-layer execution choice (`sparse:fastest`), and the model's
oracle where it has one (its decisions made beforehand, the skipped parts removed), in
float32 and under autocast (float16), in contiguous and channels_last memory: the
interleaved realization measurement of `benchmarks.latency` (CUDA events on a GPU), with the
MACs the trace counts on the timed images. Then CUDA graphs: each static network, each
dynamic model in the masked engine (fixed work per batch: no host synchronisation) and each
oracle (a fixed pattern: the decisions of that batch), captured and replayed at each batch
size; where a capture fails, the row says why.

Budget: every measurement stops at `max_time_s` (a slow execution, such as one convolution
per channel pattern at batch 256, is timed over fewer calls and its rows say `time_capped`),
and no new setting starts after `--deadline-s` (default 420 s; the rest are rows that say
so), so that one call of a device's 10-minute limit ends with every file written.

Weights are generated (seeded), BatchNorm statistics are calibrated on the sample set and
the controllers are centred on it (`benchmarks.goldens.inference`), so that the gates route
about half of the work: the timings measure execution, not accuracy. Inputs are the
protocol's latency sample set (128 Fashion-MNIST test images; padded to 32×32 for the ResNets).

Writes to `--out`: `realization.csv` (one row per pair × precision × memory format × batch
× engine: latency, MACs, speed-up, realization ratio), `measurements.csv` (every timed
measurement with its environment columns), `graphs.csv`, and `environment.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

#: (pair name, dynamic model id, kwargs, static model id, kwargs, dataset options)
PAIRS: tuple[tuple[str, str, dict[str, Any], str, dict[str, Any], dict[str, Any]], ...] = (
    ("lcnet_l_resnet56", "lcnet_l_cifar_resnet56", {}, "cifar_resnet56", {}, {"pad_to": 32}),
    ("lcnet_c_resnet56", "lcnet_c_cifar_resnet56", {}, "cifar_resnet56", {}, {"pad_to": 32}),
    ("lcnet_lc_resnet56", "lcnet_lc_cifar_resnet56", {}, "cifar_resnet56", {}, {"pad_to": 32}),
    ("d2nn_cascade", "d2nn_cascade", {"width": 16}, "d2nn_cascade_static", {"width": 16, "stages": 4},
     {"positive_classes": [8]}),
    ("skipnet_resnet110", "skipnet_cifar_resnet110", {}, "cifar_resnet110", {}, {"pad_to": 32}),
    ("blockdrop_resnet110", "blockdrop_cifar_resnet110", {}, "cifar_resnet110", {}, {"pad_to": 32}),
    ("convnet_aig_resnet110", "convnet_aig_cifar_resnet110", {}, "cifar_resnet110", {}, {"pad_to": 32}),
    ("fbs_resnet56", "fbs_cifar_resnet56", {}, "cifar_resnet56", {}, {"pad_to": 32}),
    ("early_exit_resnet56", "early_exit_cifar_resnet56", {}, "cifar_resnet56", {}, {"pad_to": 32}),
)  # fmt: skip
#: pairs whose controllers are not centred: FBS keeps k channels of every layer by construction
#: (winner-take-all), and its saliencies are the gates' scales, so centring them only rescales
#: activations, block after block, until they overflow
UNCENTRED = {"fbs_resnet56"}
#: the engines of every dynamic model (the oracle is added where the model has one)
ENGINES = ("masked", "sparse", "sparse:fastest")
#: the latency sample set: a batch-1 measurement times whole cycles of it, so it sets the
#: suite's length (256 images cost twice the time at batch 1)
SAMPLES = 128
#: seconds after which no new setting starts (the device's limit is 600 s a call)
DEADLINE_S = 420.0
PRECISIONS = ("float32", "amp")
MEMORY_FORMATS = (False, True)  # channels_last


class Autocast(nn.Module):
    """Runs the wrapped model under autocast (float16 on CUDA, bfloat16 on a CPU), weights
    kept in float32: mixed precision as a user would deploy it."""

    def __init__(self, model: nn.Module, device: str):
        super().__init__()
        self.model = model
        self.device_type = torch.device(device).type
        self.dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)

    def oracle(self, x: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """The wrapped model's oracle, deciding and running under the same autocast."""
        inner = getattr(self.model, "oracle", None)
        if inner is None:
            return None
        with torch.autocast(self.device_type, dtype=self.dtype):
            forward = inner(x)
        if forward is None:
            return None

        def run() -> torch.Tensor:
            with torch.autocast(self.device_type, dtype=self.dtype):
                return forward()

        return run


@dataclass
class Pair:
    name: str
    dynamic: nn.Module
    static: nn.Module
    dynamic_id: str
    static_id: str
    samples: Any


def build_pair(spec: tuple, data_root: str | None, count: int, seed: int = 0) -> Pair:
    """Seeded models on the protocol's sample set: BatchNorm calibrated, controllers centred."""
    from benchmarks.data import dataset_info
    from benchmarks.goldens.inference import calibrate_batchnorm, centre_controllers
    from benchmarks.latency import latency_sample_set
    from benchmarks.registry import create_model

    name, dynamic_id, dynamic_kwargs, static_id, static_kwargs, options = spec
    info = dataset_info("fashion-mnist", options)
    samples = latency_sample_set("fashion-mnist", count=count, data_root=data_root, options=options)
    common = {"num_classes": info.num_classes, "in_chans": info.input_shape[0]}
    models = []
    for model_id, kwargs in ((dynamic_id, dynamic_kwargs), (static_id, static_kwargs)):
        torch.manual_seed(seed)
        model = create_model(model_id, **common, **kwargs)
        calibrate_batchnorm(model, samples.images)
        if name not in UNCENTRED:
            centre_controllers(model, samples.images)
        models.append(model.eval())
    return Pair(name, models[0], models[1], dynamic_id, static_id, samples)


def _wrap(model: nn.Module, precision: str, device: str) -> nn.Module:
    return Autocast(model, device) if precision == "amp" else model


def measure_pairs(pairs: Sequence[Pair], device: str, batch_sizes: Sequence[int], timing: dict[str, Any],
                  log: Callable[[str], None], on_progress: Callable[[list, list], None] | None = None,
                  deadline: float | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Interleaved realization measurements of every pair in every precision and format
    (`on_progress` gets the rows so far after each setting: a run cut short keeps them). No
    setting starts after `deadline` (a `time.perf_counter()` value): it becomes a row that
    says so."""
    from benchmarks.latency import LatencyConfig, measure_realization

    realization, measured = [], []
    for pair in pairs:
        for precision in PRECISIONS:
            for channels_last in MEMORY_FORMATS:
                setting = {"pair": pair.name, "precision": precision, "channels_last": channels_last}
                started = time.perf_counter()
                if deadline is not None and started > deadline:
                    realization.append(dict(setting, note="not measured: past the suite's deadline"))
                    continue
                config = LatencyConfig(device=device, batch_sizes=tuple(batch_sizes), threads=None,
                                       channels_last=channels_last, **timing)  # fmt: skip
                try:
                    result = measure_realization(
                        _wrap(pair.dynamic, precision, device), _wrap(pair.static, precision, device),
                        pair.samples, pair.dynamic_id, pair.static_id, config, engines=ENGINES, rounds=2,
                    )  # fmt: skip
                except Exception as exc:  # one setting that fails is reported; the others still run
                    realization.append(dict(setting, note=f"{type(exc).__name__}: {str(exc)[:300]}"))
                    log(f"[gpu-suite] {pair.name} {precision} channels_last={channels_last} FAILED: {exc}")
                    continue
                realization += [dict(setting, **row) for row in result.rows]
                measured += [dict(setting, **m.row) for m in result.static + result.dynamic]
                log(f"[gpu-suite] {pair.name} {precision} channels_last={channels_last}: "
                    f"{time.perf_counter() - started:.1f}s")  # fmt: skip
                if on_progress is not None:
                    on_progress(realization, measured)
    return realization, measured


def graph_latency(model: nn.Module, batch: torch.Tensor, replays: int) -> float:
    """Median ms per replay of `model(batch)` captured in a CUDA graph (CUDA events)."""
    static_input = batch.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(static_input)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(sorted(times)[len(times) // 2])


def measure_graphs(pairs: Sequence[Pair], device: str, batch_sizes: Sequence[int], replays: int,
                   log: Callable[[str], None], deadline: float | None = None) -> list[dict]:  # fmt: skip
    """CUDA-graph replay latency of each static network, each dynamic model in the masked
    engine and each oracle with its batch's decisions fixed, beside the eager latency of the
    same call (same events, same batch)."""
    from benchmarks.latency import round_robin_batches, supports_oracle
    from benchmarks.routing import set_engine

    rows = []
    seen: set[str] = set()
    for pair in pairs:
        subjects = [(pair.dynamic_id, pair.dynamic, "masked")]
        if supports_oracle(pair.dynamic):
            subjects.append((pair.dynamic_id, pair.dynamic, "oracle"))
        if pair.static_id not in seen:
            subjects.insert(0, (pair.static_id, pair.static, "none"))
            seen.add(pair.static_id)
        for model_id, model, engine in subjects:
            if engine != "none":
                set_engine(model, "masked" if engine == "masked" else "sparse")
            model.to(device).eval()
            for precision in PRECISIONS:
                runnable = _wrap(model, precision, device)
                for batch_size in batch_sizes:
                    if deadline is not None and time.perf_counter() > deadline:
                        break
                    batch = round_robin_batches(pair.samples.images.to(device), int(batch_size))[0]
                    row = {"pair": pair.name, "model": model_id, "engine": engine, "precision": precision,
                           "batch_size": int(batch_size), "device": device}  # fmt: skip
                    call = runnable
                    if engine == "oracle":  # the decisions of this batch, fixed: a static network
                        with torch.inference_mode():
                            forward = _wrap(model, precision, device).oracle(batch)
                        if forward is None:
                            rows.append(dict(row, graph_ms=None, eager_ms=None, note="no oracle at this batch size"))
                            continue

                        def call(_x: torch.Tensor, forward: Callable[[], torch.Tensor] = forward) -> torch.Tensor:
                            return forward()
                    if torch.device(device).type != "cuda":
                        rows.append(dict(row, graph_ms=None, eager_ms=None, note="CUDA graphs need a CUDA device"))
                        continue
                    try:
                        eager = _eager_ms(call, batch, replays)
                        graphed = graph_latency(call, batch, replays)
                        rows.append(dict(row, graph_ms=graphed, eager_ms=eager, note=""))
                    except Exception as exc:  # a capture that fails is a finding, not a crash
                        rows.append(dict(row, graph_ms=None, eager_ms=None, note=f"{type(exc).__name__}: {str(exc)[:200]}"))
                        with contextlib.suppress(Exception):  # a failed capture may leave an error pending
                            torch.cuda.synchronize()
                    log(f"[gpu-suite] graph {model_id} {engine} {precision} b{batch_size}: {rows[-1]['graph_ms']}")
            if engine != "none":
                set_engine(model, "sparse")
    return rows


def _eager_ms(model: nn.Module, batch: torch.Tensor, replays: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(batch)
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return float(sorted(times)[len(times) // 2])


def run(device: str, out: str | Path, *, small: bool = False, data_root: str | None = None,
        pairs: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
        deadline_s: float = DEADLINE_S) -> list[Path]:  # fmt: skip
    """Measure everything (or the `pairs` named) and write the CSVs and the environment record
    under `out`; no new setting starts `deadline_s` seconds after the start."""
    from benchmarks.environment import environment_record
    from benchmarks.io import atomic_write_text, ensure_dir

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        from benchmarks.errors import DynbenchError

        raise DynbenchError("--device cuda was asked for, but torch sees no CUDA device")
    unknown = sorted(set(pairs or ()) - {spec[0] for spec in PAIRS})
    if unknown:
        from benchmarks.errors import UnknownNameError

        raise UnknownNameError("pair", unknown[0], [spec[0] for spec in PAIRS])
    out = ensure_dir(out)
    started = time.perf_counter()
    batch_sizes = (1, 4) if small else (1, 64, 256)
    timing = (dict(repeats=2, warmup_iters=1, warmup_s=0.0, min_time_s=0.0, retries=0) if small
              else dict(repeats=10, warmup_iters=3, warmup_s=0.1, min_time_s=0.2, max_time_s=1.0, retries=1))  # fmt: skip
    env = environment_record(torch.device(device))
    env["small"] = small
    files: list[Path] = []

    def write(name: str, rows: list[dict]) -> None:
        path = atomic_write_text(out / name, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
        if path not in files:
            files.append(path)

    def write_env(finished: bool) -> None:
        env["gpu_suite_seconds"] = round(time.perf_counter() - started, 1)
        env["finished"] = finished
        path = atomic_write_text(out / "environment.json", json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")
        if path not in files:
            files.append(path)

    write_env(False)
    # 128 images: a batch-1 cycle (every image timed equally often) is 128 calls, not 256
    chosen = [build_pair(spec, data_root, count=16 if small else SAMPLES) for spec in PAIRS if not pairs or spec[0] in pairs]

    def progress(realization: list[dict], measured: list[dict]) -> None:
        write("realization.csv", realization)
        write("measurements.csv", measured)
        write_env(False)

    deadline = started + deadline_s
    realization, measured = measure_pairs(chosen, device, batch_sizes, timing, log, progress, deadline)
    progress(realization, measured)
    graphs_deadline = deadline + 60  # the graphs are quick: a minute past the measurements' deadline
    write("graphs.csv", measure_graphs(chosen, device, batch_sizes, replays=5 if small else 50, log=log,
                                       deadline=graphs_deadline))  # fmt: skip
    write_env(True)
    log(f"[gpu-suite] done in {env['gpu_suite_seconds']}s")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    parser.add_argument("--out", default="results/latency/gpu", help="where the CSVs go")
    parser.add_argument("--small", action="store_true", help="tiny sizes and timings (tests, a dry run)")
    parser.add_argument("--data-root", default=None, help="where fashion-mnist/ is (default: the usual places)")
    parser.add_argument("--pair", action="append", dest="pairs", metavar="NAME",
                        help=f"measure only this pair (repeatable): {', '.join(s[0] for s in PAIRS)}")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S,
                        help="start no new setting after this many seconds (default %(default)s)")
    args = parser.parse_args(argv)
    from benchmarks.errors import DynbenchError

    try:
        for path in run(args.device, args.out, small=args.small, data_root=args.data_root, pairs=args.pairs,
                        deadline_s=args.deadline_s):
            print(path)
    except DynbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
