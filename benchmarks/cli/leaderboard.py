"""`dynbench leaderboard submit|validate`: records of submitted models (docs/leaderboard.md).

    dynbench leaderboard submit results/runs/<run> --id my-model --title "..." --author "A. Name"
    dynbench leaderboard validate results/leaderboard/entries
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from benchmarks.cli.options import data_root_option
from benchmarks.errors import DynbenchError

ENTRIES = Path("results") / "leaderboard" / "entries"


@click.group("leaderboard")
def leaderboard() -> None:
    """Submit, validate, evaluate and render leaderboard records."""


@leaderboard.command("submit")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--id", "entry_id", required=True, help="Entry id: 3-80 of a-z, 0-9, '.', '_', '-'; names its folder.")
@click.option("--title", required=True, help="What the entry is, in a line.")
@click.option("--author", "authors", multiple=True, required=True, help="An author (repeat for several).")
@click.option("--paper-url", default=None, help="http(s) URL of the paper.")
@click.option("--code-url", default=None, help="http(s) URL of the code.")
@click.option("--entries", default=str(ENTRIES), show_default=True, type=click.Path(file_okay=False),
              help="Leaderboard entries folder the record is written to.")  # fmt: skip
def submit(run_dir: str, entry_id: str, title: str, authors: tuple[str, ...], paper_url: str | None,
           code_url: str | None, entries: str) -> None:  # fmt: skip
    """Make a pending record from the finished run folder RUN_DIR: its selected weights
    (copied, with their sha256), model, protocol and reported val/test metrics."""
    from benchmarks.leaderboard import make_record

    path = make_record(run_dir, entries, entry_id=entry_id, title=title, authors=list(authors),
                       paper_url=paper_url, code_url=code_url)  # fmt: skip
    click.echo(f"record: {path} (pending; next: dynbench leaderboard validate {path.parent})")


@leaderboard.command("validate")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--max-weights-mb", type=click.FloatRange(min=0, min_open=True), default=512, show_default=True,
              help="Refuse weights files larger than this.")  # fmt: skip
def validate(paths: tuple[str, ...], max_weights_mb: float) -> None:
    """Check records without running a model: schema, model id, protocol and split hashes,
    weights (inside the record's folder, size, sha256, safetensors), unique entry ids.
    PATHS: record files, entry folders or an entries folder (default: results/leaderboard/entries)."""
    from benchmarks.leaderboard.records import RecordError, record_paths, validate_leaderboard

    files = [f for p in (paths or (str(ENTRIES),)) for f in record_paths(p)]
    if not files:
        raise RecordError(f"no record.json under {', '.join(paths or (str(ENTRIES),))}")
    records = validate_leaderboard(files, max_weights_bytes=int(max_weights_mb * 2**20))
    for record in records:
        click.echo(f"ok: {record.entry_id} ({record.path})")
    click.echo(f"{len(records)} record(s) valid")


@leaderboard.command("evaluate")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--fast", is_flag=True, help="A fixed, hashed 500-image subset of each split (CI); wider tolerances.")
@click.option("--no-latency", is_flag=True, help="Skip the CPU latency and realization ratio.")
@click.option("--max-weights-mb", type=click.FloatRange(min=0, min_open=True), default=512, show_default=True,
              help="Refuse weights larger than this (before downloading them).")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a weights URL may take to answer.")  # fmt: skip
@data_root_option
def evaluate(paths: tuple[str, ...], fast: bool, no_latency: bool, max_weights_mb: float, timeout_s: float,
             data_root: str | None) -> None:  # fmt: skip
    """Re-evaluate records with the harness: fetch and verify the weights, run the admission
    rules of PROTOCOL.md §5, measure accuracy, MACs and latency, and write the results and the
    status (admitted, marked or rejected, with reasons) into each record."""
    import time

    from benchmarks.leaderboard.evaluate import evaluate_record
    from benchmarks.leaderboard.records import RecordError, record_paths

    files = [f for p in (paths or (str(ENTRIES),)) for f in record_paths(p)]
    if not files:
        raise RecordError(f"no record.json under {', '.join(paths or (str(ENTRIES),))}")
    refused = []
    for path in files:
        started = time.perf_counter()
        try:
            data = evaluate_record(path, fast=fast, data_root=data_root, latency=not no_latency,
                                   max_bytes=int(max_weights_mb * 2**20), timeout_s=timeout_s,
                                   log=lambda message: click.echo(message, err=True))  # fmt: skip
        except DynbenchError as exc:  # one bad record does not stop the others; it is left unchanged
            refused.append(path)
            click.echo(f"error: {exc}", err=True)
            continue
        status = data["status"]
        test = data["evaluation"]["accuracy"]["test"]
        click.echo(f"{data['entry_id']}: {status['state']} ({time.perf_counter() - started:.1f}s), test accuracy "
                   f"{test['accuracy']:.2f} on {test['images']} images, {data['evaluation']['cost']['macs_mean']:,.0f} MACs")  # fmt: skip
        for reason in status["reasons"]:
            click.echo(f"  {reason}")
    if refused:
        click.echo(f"{len(refused)} of {len(files)} record(s) refused, left unchanged", err=True)
        sys.exit(2)
