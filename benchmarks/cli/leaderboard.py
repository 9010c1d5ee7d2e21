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


def _json_option(ctx: click.Context, param: click.Parameter, value: str | None) -> dict | None:
    import json

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("a JSON object, e.g. '{\"width\": 8}'")
    return parsed


@leaderboard.command("submit")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--id", "entry_id", required=True, help="Entry id: 3-80 of a-z, 0-9, '.', '_', '-'; names its folder.")
@click.option("--title", required=True, help="What the entry is, in a line.")
@click.option("--author", "authors", multiple=True, required=True, help="An author (repeat for several).")
@click.option("--paper-url", default=None, help="http(s) URL of the paper.")
@click.option("--code-url", default=None, help="http(s) URL of the code.")
@click.option("--entries", default=str(ENTRIES), show_default=True, type=click.Path(file_okay=False),
              help="Leaderboard entries folder the record is written to.")  # fmt: skip
@click.option("--model", "model_id", default=None, help="Without RUN_DIR: the registry id of the model.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Without RUN_DIR: its .safetensors file.")
@click.option("--kwargs", callback=_json_option, default=None, help="Without RUN_DIR: constructor arguments (JSON object).")
@click.option("--dataset", default=None, help="Without RUN_DIR: the dataset it was trained on.")
@click.option("--dataset-options", callback=_json_option, default=None, help="Without RUN_DIR: dataset options (JSON object).")
@click.option("--accuracy-val", type=float, default=None, help="Without RUN_DIR: reported val accuracy (%).")
@click.option("--accuracy-test", type=float, default=None, help="Without RUN_DIR: reported test accuracy (%).")
@click.option("--f1-test", type=float, default=None, help="Without RUN_DIR: reported test F-score (%), binary tasks.")
@click.option("--macs", type=float, default=None, help="Without RUN_DIR: reported mean executed MACs per sample, controllers included.")
@click.option("--controller-macs", type=float, default=None, help="Without RUN_DIR: reported mean controller MACs per sample.")
@click.option("--training-images", type=int, default=None, help="Without RUN_DIR: images processed in training (budget).")
def submit(run_dir: str | None, entry_id: str, title: str, authors: tuple[str, ...], paper_url: str | None,
           code_url: str | None, entries: str, model_id: str | None, weights: str | None, kwargs: dict | None,
           dataset: str | None, dataset_options: dict | None, accuracy_val: float | None, accuracy_test: float | None,
           f1_test: float | None, macs: float | None, controller_macs: float | None, training_images: int | None) -> None:  # fmt: skip
    """Make a pending record: from the finished run folder RUN_DIR (its selected weights,
    model, protocol and val/test metrics), or from --model, --weights, --dataset and the
    reported numbers. The weights are copied beside the record with their sha256."""
    from benchmarks.leaderboard.records import (
        RecordError,
        Submission,
        make_record,
        make_record_from_weights,
    )

    who = Submission(entry_id, title, list(authors), paper_url, code_url)
    if run_dir is not None:
        if model_id or weights or dataset:
            raise RecordError("give a RUN_DIR or --model/--weights/--dataset, not both")
        path = make_record(run_dir, entries, who)
    else:
        if not (model_id and weights and dataset):
            raise RecordError("give a finished RUN_DIR, or --model, --weights and --dataset with the reported numbers")
        reported = {"accuracy_val": accuracy_val, "accuracy_test": accuracy_test, "f1_test": f1_test, "macs_mean": macs,
                    "macs_controller_mean": controller_macs, "training_images": training_images}  # fmt: skip
        path = make_record_from_weights(model_id, weights, entries, who, dataset=dataset, reported=reported,
                                        kwargs=kwargs, options=dataset_options)  # fmt: skip
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


@leaderboard.command("render")
@click.option("--entries", default=str(ENTRIES), show_default=True, type=click.Path(file_okay=False),
              help="Leaderboard entries folder.")  # fmt: skip
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Where index.md and index.html go (default: above --entries).")
def render(entries: str, out: str | None) -> None:
    """Write the leaderboard page (index.md, a self-contained sortable index.html with Pareto
    plots, and leaderboard.json) from the evaluated records."""
    from benchmarks.leaderboard.render import render as render_page

    for path in render_page(entries, out):
        click.echo(str(path))
