"""`dynbench models [PATTERN]`: list registered models with their paper and variant."""

from __future__ import annotations

import click

from benchmarks.registry import get_model_spec, list_models, model_source, plugin_errors


@click.command("models")
@click.argument("pattern", default="*")
@click.option("--kind", type=click.Choice(["static", "pruned", "dynamic"]), default=None)
def models(pattern: str, kind: str | None) -> None:
    """List registered model ids matching PATTERN (shell-style, e.g. 'cifar_resnet*'), with
    models of installed plugins (entry point group `dynbench.models`). A plugin that fails to
    import is named with its error on stderr, the other models are still listed, and the
    exit status is 2. A kind (`dynbench models dynamic`) or a tag (`dynbench models early-exit`,
    `lcnet`, `d2nn`) as PATTERN lists the models of that kind or family."""
    names = list_models(pattern, kind=kind)
    if not names and pattern in ("static", "pruned", "dynamic") and kind in (None, pattern):
        names = list_models(kind=pattern)
    if not names and pattern != "*":
        names = [n for n in list_models(kind=kind) if pattern in get_model_spec(n).tags]
    failed = plugin_errors()
    if names:
        width = max(len(n) for n in names)
        for name in names:
            spec = get_model_spec(name)
            variant = f" ({spec.variant})" if spec.variant else ""
            source = model_source(name)
            origin = "" if source == "dynbench" else f"  [{source}]"
            click.echo(f"{name:<{width}}  {spec.kind:<7}  {spec.paper}{variant}{origin}")
    for plugin, error in failed.items():
        click.echo(f"error: {plugin} failed to import, its models are not listed: {error}", err=True)
    if failed:
        raise SystemExit(2)
    if not names:
        import difflib

        close = difflib.get_close_matches(pattern, list_models(kind=kind), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        click.echo(f"no registered model matches '{pattern}'.{hint}", err=True)
        raise SystemExit(1)
