"""The `dynbench` command line.

Sub-commands live in their own modules and are imported only when invoked, so `dynbench
--help` stays fast. To add one, add its "name": "module:attribute" entry to COMMANDS.
Every user error (`DynbenchError`) is printed as one clear line on stderr with exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from benchmarks import __version__
from benchmarks.errors import DynbenchError

RESUME_HINT = (
    "interrupted. Finished epochs are kept: running the same command again resumes from the "
    "last one, to the same result."
)

COMMANDS: dict[str, str] = {
    "check": "benchmarks.cli.check:check",
    "cost": "benchmarks.cli.cost:cost",
    "data": "benchmarks.cli.data:data",
    "latency": "benchmarks.cli.latency:latency",
    "leaderboard": "benchmarks.cli.leaderboard:leaderboard",
    "models": "benchmarks.cli.models:models",
    "reproduce": "benchmarks.cli.reproduce:reproduce",
    "train": "benchmarks.cli.train:train",
    "eval": "benchmarks.cli.train:evaluate",
    "tables": "benchmarks.cli.tables:tables",
    "figures": "benchmarks.cli.tables:figures",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, COMMANDS, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            ctx.fail(f"no such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dynbench")
def cli() -> None:
    """dynbench: benchmark and reproduce dynamic (input-adaptive) neural networks.

    Accuracy on standardized splits, MACs actually executed per sample, and measured latency,
    the same way for every method (D2NN, LC-Net, static, pruning and dynamic baselines).
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="dynbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(RESUME_HINT, err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DynbenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo(RESUME_HINT, err=True)
        sys.exit(130)
