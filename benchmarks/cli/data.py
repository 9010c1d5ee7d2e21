"""`dynbench data list | prepare NAME | verify NAME`: datasets, their splits and checksums."""

from __future__ import annotations

import time
from pathlib import Path

import click

from benchmarks.data import get_source, list_datasets
from benchmarks.data.base import DatasetSource, FileCheck
from benchmarks.data.manifest import SPLIT_NAMES, Manifest
from benchmarks.data.prepared import PreparedSource, recipe_sha256

data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data root searched first (then $DYNBENCH_DATA, then ~/.cache/dynbench).",
)


@click.group("data")
def data() -> None:
    """Datasets and their standardized train / val / test splits."""


def _location(source: DatasetSource, data_root: Path | None) -> tuple[str, bool]:
    """Where the dataset is (or what is missing), and whether it is ready to load."""
    for folder in source.candidate_dirs(data_root):
        if source.is_present(folder):
            return str(folder), True
    if isinstance(source, PreparedSource):
        raw = source.find_raw(data_root)
        if raw is not None:
            option = f" --data-root {data_root}" if data_root else ""
            return f"source at {raw}; run `dynbench data prepare {source.name}{option}`", False
    return "not found", False


@data.command("list")
@data_root_option
def list_command(data_root: Path | None) -> None:
    """List the datasets: classes, input shape, split sizes and where each one is."""
    rows, missing = [], []
    for name in list_datasets():
        source = get_source(name)
        info = source.info
        counts = source.split_counts()
        sizes = " / ".join(str(counts.get(s, "?")) for s in SPLIT_NAMES)
        where, ready = _location(source, data_root)
        if not ready:
            missing.append(source)
        shape = "x".join(str(d) for d in info.input_shape)
        rows.append((name, str(info.num_classes), shape, sizes, info.metric, where))
    header = ("dataset", "classes", "input", "train / val / test", "metric", "location")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(f"{c:<{w}}" for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    for source in missing:
        click.echo(f"\n{source.name}:\n  " + source.info.how_to_get.replace("\n", "\n  "))


def _print_splits(manifest: Manifest) -> None:
    click.echo("splits")
    for name in [s for s in SPLIT_NAMES if s in manifest.splits]:
        entry = manifest.splits[name]
        click.echo(
            f"  {name:<5} {len(entry.indices):>9,}  sha256 {entry.sha256}  (pool '{entry.pool}')"
        )


@data.command("prepare")
@click.argument("name")
@data_root_option
@click.option("--no-download", is_flag=True, help="Use only files already on disk.")
def prepare_command(name: str, data_root: Path | None, no_download: bool) -> None:
    """Find (or download, where possible) dataset NAME and make its split manifest."""
    source = get_source(name)
    before: dict[str, str] = {}
    if isinstance(source, PreparedSource):
        for folder in source.candidate_dirs(data_root):
            if source.is_present(folder):
                try:
                    before = {k: v.sha256 for k, v in source.manifest(folder).splits.items()}
                except Exception:  # an unreadable old manifest is simply replaced
                    before = {}
                break
        click.echo(f"preparing {name} (this reads every source file once)...", err=True)
    start = time.perf_counter()
    folder = source.prepare(data_root, download=not no_download)
    manifest = source.manifest(folder)
    click.echo(f"{name}: ready in {folder} ({time.perf_counter() - start:.1f} s)")
    if manifest.path is not None:
        click.echo(f"manifest  {manifest.path}")
    _print_splits(manifest)
    after = {k: v.sha256 for k, v in manifest.splits.items()}
    if before and before != after:
        changed = ", ".join(sorted(k for k in after if before.get(k) != after[k]))
        click.echo(f"note: replaced a manifest whose splits differed ({changed})")


@data.command("verify")
@click.argument("name")
@data_root_option
@click.option("--full", is_flag=True, help="Also rebuild the splits from the source files and compare.")
def verify_command(name: str, data_root: Path | None, full: bool) -> None:
    """Check dataset NAME against its split manifest; exit non-zero on any mismatch."""
    source = get_source(name)
    start = time.perf_counter()
    folder = source.locate(data_root)
    manifest = source.manifest(folder)
    click.echo(f"dataset   {name}")
    click.echo(f"folder    {folder}")
    click.echo(f"manifest  {manifest.path}")
    if isinstance(source, PreparedSource):
        recipe = source.recipe()
        click.echo(f"recipe    {recipe.path or '(given)'}  sha256 {recipe_sha256(recipe)}")
        # Recorded, not resolved: LFW-B loads from its crop cache even without LFW itself.
        click.echo(f"source    {manifest.extra.get('source_folder', '-')}")
    click.echo("files")

    def show(check: FileCheck) -> None:
        status = "ok" if check.ok else "MISSING" if check.actual is None else "MISMATCH"
        click.echo(f"  {status:<8} {check.name}  {check.algorithm} {check.actual or '-'}")
        if not check.ok:
            click.echo(f"  {'':<8} {'':<{len(check.name)}}  expected {check.expected}")

    source.verify(folder, manifest, full=full, on_check=show)
    _print_splits(manifest)
    kind = "full check" if full else "check"
    click.echo(f"ok: {name} passed the {kind} in {time.perf_counter() - start:.2f} s")
