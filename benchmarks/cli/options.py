"""Options shared by several sub-commands."""

from __future__ import annotations

import click

data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    envvar="DYNBENCH_DATA",
    help="Dataset root (default: $DYNBENCH_DATA, then ~/.cache/dynbench, then system folders).",
)
device_option = click.option(
    "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)."
)
