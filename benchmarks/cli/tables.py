"""`dynbench tables` and `dynbench figures`: reproduced vs published, and the trade-off plots."""

from __future__ import annotations

import sys

import click


@click.command("tables")
@click.option("--suite", default="all", show_default=True, help="Suite whose rows and published numbers to compare.")
@click.option("--check", is_flag=True, help="Exit with status 1 when a reproduced number drifts beyond its tolerance.")
@click.option("--out", default="results/tables", show_default=True, type=click.Path(file_okay=False),
              help="Where the tables go; the suite's rows are read from <out>/<suite>.csv.")  # fmt: skip
@click.option("--tolerance-acc", type=float, default=0.5, show_default=True,
              help="Allowed accuracy difference in points (for 3-seed means).")  # fmt: skip
@click.option("--rows", "rows_file", type=click.Path(dir_okay=False), default=None,
              help="Result rows to use instead of <out>/<suite>.csv (a results.csv or suite CSV).")  # fmt: skip
@click.option("--runs", "runs_root", type=click.Path(file_okay=False), default=None,
              help="Run folders to read when <out>/<suite>.csv does not exist (default: <out>/../runs).")  # fmt: skip
@click.option("--published", type=click.Path(dir_okay=False), default=None,
              help="published.csv to compare with (default: results/paper/published.csv).")  # fmt: skip
@click.option("--mapping", type=click.Path(dir_okay=False), default=None,
              help="Published-number mapping YAML (default: benchmarks/published_map.yaml).")  # fmt: skip
def tables(suite: str, check: bool, out: str, tolerance_acc: float, rows_file: str | None,
           runs_root: str | None, published: str | None, mapping: str | None) -> None:  # fmt: skip
    """Put reproduced numbers beside published ones, with a status per row.

    MACs and params of static and pruned models are counted on the registered architecture
    (no training needed); accuracy comes from the mapped experiment's test rows. Writes
    <suite>_vs_published.{csv,md,tex} and, when the suite has rows, <suite>.{md,tex}.
    """
    from benchmarks.tables import STATUS_DRIFT, STATUS_KNOWN, build_tables, describe_row

    report = build_tables(suite, out, rows=rows_file, runs_root=runs_root, published=published,
                          mapping=mapping, tolerance_acc=tolerance_acc)  # fmt: skip
    counts = report.counts()
    total = len(report.comparison)
    click.echo(f"suite '{suite}': {report.rows} result row(s); {total} published number(s) mapped, "
               f"{report.reproduced()} reproduced: " + ", ".join(f"{n} {s}" for s, n in counts.items()))  # fmt: skip
    if report.unmapped:
        shown = ", ".join(f"{paper} {n}" for paper, n in sorted(report.unmapped.items(), key=lambda kv: -kv[1]))
        click.echo(f"published numbers no mapping entry claims: {sum(report.unmapped.values())} ({shown})")
    for row in report.comparison[report.comparison["status"] == STATUS_KNOWN].to_dict("records"):
        click.echo(f"known deviation: {describe_row(row)}")
    for row in report.failures.to_dict("records"):
        click.echo(f"DRIFT: {describe_row(row)}", err=True)
    click.echo("tables:")
    for path in report.files:
        click.echo(f"  {path}")
    if check and report.reproduced() == 0:
        click.echo(f"check failed: nothing to check: no published number of suite '{suite}' was reproduced "
                   f"({report.rows} result row(s), {total} published number(s) mapped)", err=True)  # fmt: skip
        sys.exit(1)
    if check and len(report.failures):
        click.echo(f"check failed: {len(report.failures)} reproduced number(s) drifted ({STATUS_DRIFT})", err=True)
        sys.exit(1)
    if check:
        click.echo("check passed: no reproduced number drifted")


@click.command("figures")
@click.option("--suite", default="all", show_default=True, help="Suite whose rows to plot.")
@click.option("--out", default="results/figures", show_default=True, type=click.Path(file_okay=False))
@click.option("--tables", "tables_dir", default="results/tables", show_default=True,
              type=click.Path(file_okay=False), help="Where the suite's rows (<suite>.csv) are.")  # fmt: skip
@click.option("--latency", "latency_files", multiple=True, type=click.Path(dir_okay=False),
              help="latency_summary.csv files (repeatable; default: every one under <out>/../latency).")  # fmt: skip
@click.option("--no-published", is_flag=True, help="Leave the published points out.")
def figures(suite: str, out: str, tables_dir: str, latency_files: tuple[str, ...], no_published: bool) -> None:
    """Accuracy vs MACs (and vs measured latency) figures of SUITE, as PNG and SVG."""
    from pathlib import Path

    from benchmarks.errors import ConfigError
    from benchmarks.figures import make_figures
    from benchmarks.suites import figure_groups
    from benchmarks.tables import suite_published, suite_rows

    for path in latency_files:  # named explicitly: a missing one is a mistake, not a skip
        if not Path(path).is_file():
            raise ConfigError(f"--latency '{path}' does not exist")
    rows = suite_rows(suite, tables_dir)
    published = None if no_published else suite_published(suite)
    paths = make_figures(suite, rows, out, published=published, latency_files=latency_files or None,
                         groups=figure_groups(suite))  # fmt: skip
    if not paths:
        click.echo(f"suite '{suite}': nothing to plot (no test rows and no published points)")
        return
    click.echo("figures:")
    for path in paths:
        click.echo(f"  {path}")
