"""`dynbench reproduce SUITE`: train (or reuse), evaluate and tabulate a whole suite."""

from __future__ import annotations

import click

from benchmarks.cli.options import data_root_option, device_option


@click.command("reproduce")
@click.argument("suite")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False), help="Where runs/ and tables/ go.")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Run seeds 0..N-1 (mean ± std); default: each config's seeds.")
@click.option("--full/--quick", "full", default=None, help="Force full-size or quick-size configs (default: the suite's setting).")
@click.option("--update-reference", is_flag=True, help="Allow overwriting reference tables and figures tracked in this checkout.")
@click.option("--yes", is_flag=True, help="Run sweeps of more than 10,000 points without asking.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs at once, each in its own process (CPU threads split between them).")
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local", show_default=True,
              help="local: this machine; slurm: a SLURM job array through submitit (shared filesystem); "
                   "submitit-local: the same path on this machine.")  # fmt: skip
@click.option("--threads", type=int, default=None, help="CPU threads per run with --jobs/--launcher (default: cores / jobs).")
@click.option("--slurm-partition", default=None, help="SLURM partition (--launcher slurm).")
@click.option("--slurm-time", type=int, default=240, show_default=True, help="SLURM time limit per run, minutes.")
@click.option("--no-latency", is_flag=True, help="Skip timing the final models (batch 1 and 64, CPU, one thread).")
@data_root_option
@device_option
def reproduce(suite: str, out: str, seeds: int | None, full: bool | None, update_reference: bool, yes: bool, jobs: int, launcher: str, threads: int | None,
              slurm_partition: str | None, slurm_time: int, no_latency: bool, data_root: str | None, device: str | None) -> None:
    """Reproduce SUITE (quick, baselines, d2nn, lcnet, all): train, evaluate, write tables."""
    from benchmarks.suites import reproduce as run_suite
    from benchmarks.sweeps import CONFIRM_POINTS

    report = run_suite(suite, out=out, data_root=data_root, seeds=seeds, quick=None if full is None else not full, device=device,
                       update_reference=update_reference, confirm_above=None if yes else CONFIRM_POINTS, jobs=jobs,
                       launcher=launcher, threads=threads, cluster={"partition": slurm_partition, "timeout_min": slurm_time},
                       latency=not no_latency)  # fmt: skip
    click.echo(f"suite '{suite}': {report.trained} run(s) trained, {report.reused} reused, {report.seconds:.0f}s")
    click.echo("runs:")
    for path in report.runs:
        click.echo(f"  {path}")
    click.echo("tables:")
    for path in report.tables:
        click.echo(f"  {path}")
    click.echo("figures:" if report.figures else "figures: none (no test rows and no published points)")
    for path in report.figures:
        click.echo(f"  {path}")
    if report.drifted:
        click.echo(f"warning: {report.drifted} reproduced number(s) drift from the published ones; "
                   f"see `dynbench tables --suite {suite} --check`", err=True)  # fmt: skip
