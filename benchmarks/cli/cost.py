"""`dynbench cost MODEL --dataset D`: per-sample MACs over a split (see docs/routing-and-cost.md).

Prints the aggregates (executed / theoretical / controller MACs, units histogram, simulated
savings flag) and, with --out, writes the per-sample table as CSV and the aggregates as
`<out>.summary.json` beside it, each atomically.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import click

from benchmarks.cli.options import data_root_option, dataset_options_option
from benchmarks.errors import CheckpointError, ConfigError, DynbenchError

STAT_COLUMNS = ("mean", "std", "p50", "p90", "p99", "min", "max")


def _builder_accepts(builder: Any, name: str) -> bool:
    try:
        return name in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False


def build_model(
    model_name: str, dataset: str, weights: str | None, options: dict | None = None, channels: int | None = None
) -> Any:
    """The registry model for `dataset` (its classes and input channels, or `channels` where
    the images are fitted to another shape), with `weights`.

    A weights file with an architecture config beside it (`<name>.json`, as the engine saves
    them) is rebuilt with that config's arguments."""
    from benchmarks.data import dataset_info
    from benchmarks.registry import create_model, get_model_spec

    spec = get_model_spec(model_name)
    info = dataset_info(dataset, options or None)
    channels = info.input_shape[0] if channels is None else channels
    kwargs: dict[str, Any] = {"num_classes": info.num_classes}
    if _builder_accepts(spec.builder, "in_chans"):
        kwargs["in_chans"] = channels
    if weights is not None:
        weights_path = Path(weights)
        if weights_path.suffix != ".safetensors":
            raise CheckpointError(
                f"--weights {weights}: expected a .safetensors file (the only weights format "
                "dynbench loads)"
            )
        if not weights_path.is_file():
            raise CheckpointError(f"--weights {weights}: no such file")
        arch_file = weights_path.with_suffix(".json")
        if arch_file.is_file():
            from benchmarks.engine.checkpoint import read_arch

            arch = read_arch(weights_path).get("arch", {})
            if arch.get("name", model_name) != model_name:
                raise CheckpointError(
                    f"--weights {weights}: {arch_file} describes model '{arch.get('name')}', "
                    f"not '{model_name}'"
                )
            kwargs = dict(arch.get("kwargs", kwargs))
    model = create_model(model_name, **kwargs)
    _check_channels(model, model_name, dataset, channels)
    if weights is not None:
        from benchmarks.engine.checkpoint import load_weights

        try:
            load_weights(model, weights)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(f"--weights {weights} does not fit '{model_name}': {exc}") from None
    return model


def _check_channels(model: Any, model_name: str, dataset: str, channels: int) -> None:
    import torch.nn as nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != channels:
                raise ConfigError(
                    f"model '{model_name}' takes {module.in_channels}-channel input, but "
                    f"dataset '{dataset}' has {channels} channel(s)"
                )
            return


def format_summary(result: Any, title: str) -> str:
    """The aggregates as a plain-text table (MACs in millions)."""
    s = result.summary
    lines = [title, ""]
    header = f"{'M MACs / sample':<18}" + "".join(f"{c:>11}" for c in STAT_COLUMNS)
    lines += [header, "-" * len(header)]
    for column, label in (
        ("macs_executed", "executed"), ("macs_theoretical", "theoretical"),
        ("macs_controller", "controller"),
    ):
        stats = s[column]
        lines.append(f"{label:<18}" + "".join(f"{stats[c] / 1e6:>11.4f}" for c in STAT_COLUMNS))
    lines.append("")
    lines.append(f"samples            {s['samples']}")
    lines.append(f"engine             {s['engine'] or 'none (static model)'}")
    lines.append(f"counter            {result.counter}")
    lines.append(f"params             {result.params:,}")
    if "accuracy" in s:
        lines.append(f"accuracy           {s['accuracy']:.2f} %")
    ratio = s["executed_over_theoretical"]
    flag = "YES" if s["simulated_savings"] else "no"
    lines.append(f"executed/theor.    {ratio:.4f}   simulated savings: {flag}")
    if s["unit_rates"]:
        hist = ", ".join(f"{k}: {v}" for k, v in s["units_histogram"].items())
        lines.append(f"units executed     histogram (units run: samples) {hist}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN (e.g. the executed/theoretical ratio of a model without MACs) becomes null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


@click.command("cost")
@click.argument("model_name", metavar="MODEL")
@click.option("--dataset", required=True, help="Dataset name (e.g. digits, fashion-mnist, cifar10).")
@click.option("--split", default="test", show_default=True, help="train, val or test.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Weights (.safetensors) to load; a dynamic model's routing depends on them.")
@click.option("--engine", type=click.Choice(["masked", "sparse"]), default="sparse",
              show_default=True, help="Routing engine of dynamic models.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Count only the first N samples of the split.")
@click.option("--counter", type=click.Choice(["functions", "modules"]), default="functions", show_default=True,
              help="functions: every conv, linear, matmul and attention call (complete); modules: module hooks only (misses functional matmuls).")  # fmt: skip
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Per-sample CSV to write (aggregates go to <out>.summary.json).")
@dataset_options_option
@data_root_option
def cost(
    model_name: str,
    dataset: str,
    split: str,
    weights: str | None,
    engine: str,
    batch_size: int,
    limit: int | None,
    counter: str,
    device: str,
    out: str | None,
    dataset_options: dict,
    data_root: str | None,
) -> None:
    """Per-sample executed, theoretical and controller MACs of MODEL over a dataset split,
    under the protocol of --dataset and its options (printed first)."""
    import torch

    from benchmarks.cost import measure_cost
    from benchmarks.data import load_split
    from benchmarks.io import atomic_write_json
    from benchmarks.routing import is_dynamic

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if out is not None:  # before minutes of counting, not after
        from benchmarks.io import check_writable

        if Path(out).is_dir():
            raise ConfigError(f"--out '{out}' is a folder; give the CSV file to write")
        check_writable(Path(out).parent if str(Path(out).parent) else Path("."))
    from benchmarks.protocol import protocol_of

    protocol = protocol_of(dataset, dataset_options)
    data = load_split(dataset, split, data_root, options=dataset_options or None)
    model = build_model(model_name, dataset, weights, dataset_options)
    click.echo(f"protocol {protocol.describe()}", err=True)  # once the input is known to be good
    if weights is None and is_dynamic(model):
        click.echo(
            "note: no --weights: randomly initialised gates, so the routing (and cost) is not "
            "that of a trained model",
            err=True,
        )
    try:
        result = measure_cost(
            model, data, engine=engine, batch_size=batch_size, limit=limit, device=device,
            counter=counter,
        )
    except RuntimeError as exc:
        raise DynbenchError(f"model '{model_name}' failed on dataset '{dataset}': {exc}") from None
    title = f"{model_name} on {dataset}/{split}"
    click.echo(format_summary(result, title))
    if out is not None:
        out_path = Path(out)
        result.to_csv(out_path)
        summary = {"model": model_name, "dataset": dataset, "protocol": protocol.id, "split": split,
                   "weights": weights, "params": result.params, **result.summary}
        atomic_write_json(out_path.with_name(out_path.name + ".summary.json"), _json_safe(summary))
        click.echo(f"\nwrote {out_path} and {out_path.name}.summary.json")
