"""`dynbench train CONFIG` and `dynbench eval RUN`."""

from __future__ import annotations

import click

from benchmarks.cli.options import data_root_option, device_option


@click.command("train")
@click.argument("config")
@click.option("--quick", is_flag=True, help="Apply the config's `quick` override (CI-sized run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. --set train.epochs=3 (repeatable).")
@click.option("--seed", type=int, default=None, help="Train only this seed (default: every seed in the config).")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-eval", is_flag=True, help="Skip the final val/test evaluation by the harness.")
@data_root_option
@device_option
def train(config: str, quick: bool, overrides: tuple[str, ...], seed: int | None, out: str, no_eval: bool, data_root: str | None, device: str | None) -> None:
    """Train CONFIG (a YAML path or a bundled '<suite>/<name>'); resumes an interrupted run."""
    from pathlib import Path

    from benchmarks.config import find_config, load_config
    from benchmarks.engine import Trainer
    from benchmarks.evaluation import finalize_run
    from benchmarks.io import ensure_dir
    from benchmarks.sweeps import expand

    points = expand(load_config(find_config(config), quick=quick, overrides=overrides))
    runs_root = Path(out) / "runs"  # made once the input has been checked
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    runs = [(point, s) for point in points for s in ([seed] if seed is not None else point["seeds"])]
    for cfg, s in runs:
        trainer = Trainer(cfg, s, runs_root=runs_root, data_root=data_root, device=device)
        trainer.preflight()  # bad input fails here, before any folder exists
        ensure_dir(runs_root)
        with trainer.exclusive():  # a second process on this run waits, then reuses it
            problem = trainer.run.completion_problem()
            if problem is None:
                click.echo(f"run: {trainer.run.path} (finished already: reused)")
                continue
            if problem != "not finished":
                log(f"{trainer.run.path.name}: {problem}; resuming and evaluating it again")
            summary = trainer.fit()
            click.echo(f"run: {summary['run_dir']}")
            if not no_eval:
                rows = finalize_run(trainer.run, data_root)
                for row in rows:
                    click.echo(f"  {row['split']}: accuracy {row['accuracy']:.2f}%")


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@data_root_option
def evaluate(run: str, data_root: str | None) -> None:
    """Evaluate a finished RUN folder's selected checkpoint on val and test (the harness)."""
    from benchmarks.evaluation import finalize_run
    from benchmarks.runs import RunFolder

    rows = finalize_run(RunFolder(__import__("pathlib").Path(run)), data_root)
    for row in rows:
        click.echo(f"{row['split']}: accuracy {row['accuracy']:.2f}%  params {row['params']}")
