"""`dynbench latency MODEL`: measured latency, honestly (see docs/latency.md).

Prints the summary table and writes, atomically, into --out:
`latency_summary.csv` (one row per engine × batch size, environment record included),
`raw/<model>__<engine>__b<batch>.csv` (every call's time, warm-up marked) and, with
--baseline, `realization.csv` (speed-up over the static backbone ÷ MACs reduction).
"""

from __future__ import annotations

from pathlib import Path

import click

from benchmarks.cli.options import check_device, data_root_option, dataset_options_option
from benchmarks.errors import ConfigError
from benchmarks.io import check_writable, ensure_dir
from benchmarks.latency import (
    COMPILE_MODES,
    DEFAULT_SAMPLE_COUNT,
    DEFAULT_SAMPLE_SEED,
    DTYPES,
    LatencyConfig,
    LatencySampleSet,
    format_table,
    is_dynamic,
    latency_sample_set,
    measure_model,
    measure_realization,
    write_measurements,
    write_rows,
)

DEFAULTS = LatencyConfig()
REALIZATION_COLUMNS = (
    "model", "baseline", "engine", "batch_size", "latency_ms", "baseline_latency_ms",
    "speedup", "macs_reduction", "realization_ratio", "oracle_realization_ratio",
)
#: above this fraction of preempted kept calls, the run warns that its numbers are inflated
BUSY_FRACTION = 0.1


def _int_list(value: str, option: str) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, got '{value}'") from None
    if not items or any(v < 1 for v in items):
        raise ConfigError(f"{option}: expected positive integers, got '{value}'")
    return items


def _build(model_name: str, weights: str | None, samples: LatencySampleSet, options: dict):
    """The model for the timed images: the dataset's classes, the images' channels, and the
    weights (with their architecture config where the engine saved one), as `dynbench cost`
    builds it."""
    from benchmarks.cli.cost import build_model

    return build_model(model_name, samples.dataset, weights, options or None, channels=samples.input_shape[0])


@click.command("latency")
@click.argument("model_name", metavar="MODEL")
@click.option("--device", default="cpu", show_default=True, callback=check_device, help="cpu, cuda or cuda:N.")
@click.option("--batch", "batch", default=",".join(map(str, DEFAULTS.batch_sizes)),
              show_default=True, help="Comma-separated batch sizes.")
@click.option("--engine", "engines", multiple=True, type=click.Choice(["masked", "sparse", "sparse:fastest", "oracle"]),
              help="Engine(s) of a dynamic model (repeatable; default: masked and sparse). "
                   "sparse:fastest lets each gated convolution pick its fastest real execution "
                   "per batch (grouped by pattern, union of kept channels, or dense; calibrated "
                   "on this device and recorded in the environment record). oracle: the model's "
                   "own decisions made beforehand, the skipped parts removed, written out by hand "
                   "(models that provide one; with --baseline it is timed unless --no-oracle).")
@click.option("--dataset", default=None,
              help="Dataset whose test split supplies the inputs (default: the model's first).")
@click.option("--input-shape", default=None,
              help="Fit the images to C,H,W (bilinear resize, grey->RGB); recorded in every row.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Weights (.safetensors) to load; routing of a dynamic model depends on them.")
@click.option("--threads", type=int, default=DEFAULTS.threads, show_default=True,
              help="torch intra-op threads, pinned for the measurement.")
@click.option("--repeats", type=int, default=DEFAULTS.repeats, show_default=True,
              help="Minimum timed calls per batch size (rounded up to whole sample-set cycles).")
@click.option("--warmup-s", type=float, default=DEFAULTS.warmup_s, show_default=True,
              help="Minimum warm-up time per batch size.")
@click.option("--warmup-iters", type=int, default=DEFAULTS.warmup_iters, show_default=True,
              help="Minimum warm-up calls per batch size.")
@click.option("--min-time-s", type=float, default=DEFAULTS.min_time_s, show_default=True,
              help="Minimum timed duration per batch size.")
@click.option("--max-time-s", type=float, default=None,
              help="Cap on the time spent per batch size (warm-up and timing each), for slow "
                   "models: timing stops after the first whole cycle past it (rows say time_capped).")
@click.option("--retries", type=int, default=DEFAULTS.retries, show_default=True,
              help="Re-issue a timed call preempted by another process up to N times.")
@click.option("--samples", type=int, default=DEFAULT_SAMPLE_COUNT, show_default=True,
              help="Size of the latency sample set.")
@click.option("--seed", type=int, default=DEFAULT_SAMPLE_SEED, show_default=True,
              help="Seed that chooses the latency sample set.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=DEFAULTS.dtype, show_default=True)
@click.option("--channels-last", is_flag=True, help="Run in channels_last memory format.")
@click.option("--compile", "compile_mode", type=click.Choice(list(COMPILE_MODES)), default=None,
              help="torch.compile the model with this mode.")
@click.option("--baseline", default=None,
              help="Static backbone model id: also time it and report the realization ratio.")
@click.option("--baseline-weights", type=click.Path(dir_okay=False), default=None)
@click.option("--rounds", type=int, default=4, show_default=True,
              help="With --baseline: interleaved rounds of model and baseline per batch size.")
@click.option("--oracle/--no-oracle", default=True, show_default=True,
              help="With --baseline: also time the model's oracle (where it provides one) and "
                   "report its realization ratio beside the model's.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: results/latency/MODEL-DEVICE).")
@dataset_options_option
@data_root_option
def latency(
    model_name: str,
    device: str,
    batch: str,
    engines: tuple[str, ...],
    dataset: str | None,
    input_shape: str | None,
    weights: str | None,
    threads: int,
    repeats: int,
    warmup_s: float,
    warmup_iters: int,
    min_time_s: float,
    max_time_s: float | None,
    retries: int,
    samples: int,
    seed: int,
    dtype: str,
    channels_last: bool,
    compile_mode: str | None,
    baseline: str | None,
    baseline_weights: str | None,
    rounds: int,
    oracle: bool,
    out: str | None,
    dataset_options: dict,
    data_root: str | None,
) -> None:
    """Measure the latency of MODEL on real test images, under the protocol of the dataset and
    its options (printed first).

    Times every batch size (and, for a dynamic model, each engine) on a fixed, seeded, hashed
    set of test-split images issued round-robin, so every image is timed equally often.
    """
    from benchmarks.registry import get_model_spec

    spec = get_model_spec(model_name)
    config = LatencyConfig(
        device=device,
        batch_sizes=_int_list(batch, "--batch"),
        threads=threads,
        repeats=repeats,
        warmup_iters=warmup_iters,
        warmup_s=warmup_s,
        min_time_s=min_time_s,
        max_time_s=max_time_s,
        retries=retries,
        dtype=dtype,
        channels_last=channels_last,
        compile_mode=compile_mode,
    )
    if dataset is None:
        if not spec.datasets:
            raise ConfigError(f"model '{model_name}' names no dataset; pass --dataset")
        dataset = spec.datasets[0]
    shape = _int_list(input_shape, "--input-shape") if input_shape else None
    from benchmarks.protocol import protocol_of

    protocol = protocol_of(dataset, dataset_options)
    sample_set = latency_sample_set(
        dataset, count=samples, seed=seed, data_root=data_root, input_shape=shape,
        options=dataset_options or None,
    )
    default_out = Path("results") / "latency" / f"{model_name}-{device.replace(':', '')}"
    out_dir = Path(out) if out else default_out
    check_writable(out_dir)  # fail on an unwritable folder before minutes of measurement

    model = _build(model_name, weights, sample_set, dataset_options)
    static = None
    if baseline is not None:
        static = _build(baseline, baseline_weights, sample_set, dataset_options)
        if is_dynamic(static):
            raise ConfigError(f"--baseline '{baseline}' is a dynamic model; name a static backbone")
    elif baseline_weights:
        raise ConfigError("--baseline-weights needs --baseline")
    click.echo(f"protocol {protocol.describe()}", err=True)
    click.echo(
        f"{model_name}: {len(sample_set)} test images of {dataset} "
        f"(seed {seed}, sha256 {sample_set.sha256[:12]}), device {device}, "
        f"threads {config.threads}",
        err=True,
    )
    realization = None
    if static is None:
        measurements = measure_model(
            model, sample_set, model_name, config, engines=engines or None, progress=None
        )
    else:
        realization = measure_realization(
            model, static, sample_set, model_name, baseline, config,
            engines=engines or None, rounds=rounds, oracle=oracle, progress=None,
        )
        measurements = realization.static + realization.dynamic
    summary = write_measurements(ensure_dir(out_dir), measurements)
    rows = [m.row for m in measurements]

    click.echo(format_table(rows))
    if realization is not None:
        write_rows(out_dir / "realization.csv", realization.rows)
        click.echo("")
        click.echo(format_table(realization.rows, REALIZATION_COLUMNS))
    busy = [r for r in rows if r["preempted_fraction"] > BUSY_FRACTION]
    if busy:
        worst = max(r["preempted_fraction"] for r in busy)
        click.echo(
            f"warning: the machine was busy (load {busy[0]['load_1m_start']}): up to "
            f"{worst:.0%} of kept calls were preempted by other processes; latencies are "
            f"inflated. Measure on a quieter machine for comparable numbers.",
            err=True,
        )
    click.echo(f"summary: {summary}", err=True)
    if realization is not None:
        click.echo(f"realization: {out_dir / 'realization.csv'}", err=True)
    click.echo(f"raw timings: {out_dir / 'raw'}", err=True)
