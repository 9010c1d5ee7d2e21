"""`dynbench models [PATTERN]`: list registered models with their paper and variant."""

from __future__ import annotations

import click

from benchmarks.registry import get_model_spec, list_models


@click.command("models")
@click.argument("pattern", default="*")
@click.option("--kind", type=click.Choice(["static", "pruned", "dynamic"]), default=None)
def models(pattern: str, kind: str | None) -> None:
    """List registered model ids matching PATTERN (shell-style, e.g. 'cifar_resnet*')."""
    names = list_models(pattern, kind=kind)
    if not names:
        click.echo(f"no registered model matches '{pattern}'", err=True)
        raise SystemExit(1)
    width = max(len(n) for n in names)
    for name in names:
        spec = get_model_spec(name)
        variant = f" ({spec.variant})" if spec.variant else ""
        click.echo(f"{name:<{width}}  {spec.kind:<7}  {spec.paper}{variant}")
