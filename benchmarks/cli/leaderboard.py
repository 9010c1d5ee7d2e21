"""`dynbench leaderboard submit|validate`: records of submitted models (docs/leaderboard.md).

    dynbench leaderboard submit results/runs/<run> --id my-model --title "..." --author "A. Name"
    dynbench leaderboard validate results/leaderboard/entries
"""

from __future__ import annotations

from pathlib import Path

import click

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
