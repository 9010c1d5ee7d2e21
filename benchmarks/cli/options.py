"""Options shared by several sub-commands."""

from __future__ import annotations

import click


def check_data_root(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An explicit --data-root must exist: falling back to another copy of the data without a
    word would measure something else than the user asked for."""
    from pathlib import Path

    if value is not None and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE:
        if not Path(value).expanduser().is_dir():
            raise click.BadParameter(f"'{value}' does not exist or is not a folder")
    return value


data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    envvar="DYNBENCH_DATA",
    callback=check_data_root,
    help="Dataset root (default: $DYNBENCH_DATA, then ~/.cache/dynbench, then system folders).",
)
def check_device(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """`--device`: cpu, cuda or cuda:N, and CUDA only where this machine has it."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"'{value}' is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"'{value}': dynbench runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"'{value}': CUDA is not available on this machine (torch {torch.__version__}, no GPU found); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(f"'{value}': this machine has {torch.cuda.device_count()} GPU(s)")
    return value


device_option = click.option(
    "--device", default=None, callback=check_device, help="cpu, cuda or cuda:N (default: cuda when available)."
)


def _dataset_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    """`--set dataset.options.KEY=VALUE` (repeatable) -> the dataset options mapping."""
    from benchmarks.config import parse_override

    options: dict = {}
    for item in values:
        parts, value = parse_override(item)
        if len(parts) != 3 or parts[:2] != ["dataset", "options"]:
            raise click.BadParameter(f"'{item}': only dataset.options.KEY=VALUE can be set here (e.g. dataset.options.pad_to=32)")
        options[parts[2]] = value
    return options


dataset_options_option = click.option(
    "--set", "dataset_options", multiple=True, callback=_dataset_options, metavar="dataset.options.KEY=VALUE",
    help="A dataset option, as in an experiment config (e.g. dataset.options.pad_to=32); repeatable. "
         "Together with --dataset they make the protocol the numbers are measured under.",
)
