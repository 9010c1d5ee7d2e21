"""`dynbench check record|verify`: inference goldens of your own experiments, for your CI.

    dynbench check record my_model --config-dir configs/ --goldens goldens/
    dynbench check verify --goldens goldens/ --junit-xml reports/goldens.xml

`record` builds each experiment's model as training would (the dataset's classes and
channels, then `model.kwargs`), seeds and prepares it on the first 32 images of `val`, and
writes `<name>.json`, `<name>.safetensors` and `<name>.inputs.safetensors` into the goldens
folder. `verify` rebuilds the models from the registry (plugins included), loads the pinned
weights and inputs, and compares logits, routing decisions and per-sample MACs under the
rules of `benchmarks.goldens.inference`: exit 0 when they hold, 1 with a readable diff when
numbers moved, 2 on bad input (nothing written then).
"""

from __future__ import annotations

from pathlib import Path

import click

from benchmarks.errors import ConfigError
from benchmarks.io import check_writable


def _config_path(name: str, config_dir: Path | None) -> Path:
    from benchmarks.config import find_config

    if config_dir is not None:
        for candidate in (config_dir / name, config_dir / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
        known = sorted(str(p.relative_to(config_dir))[:-5] for p in config_dir.rglob("*.yaml"))
        from benchmarks.errors import UnknownNameError

        raise UnknownNameError(f"config in {config_dir}", name, known)
    return find_config(name)


def _load_configs(names: tuple[str, ...], config_dir: str | None) -> list[dict]:
    from benchmarks.config import load_config

    folder = None
    if config_dir is not None:
        folder = Path(config_dir)
        if not folder.is_dir():
            raise ConfigError(f"--config-dir '{config_dir}' does not exist or is not a folder")
    configs = [load_config(_config_path(name, folder)) for name in names]
    seen: dict[str, str] = {}
    for cfg in configs:
        if cfg["name"] in seen:
            raise ConfigError(f"two configs share the experiment name '{cfg['name']}' ({seen[cfg['name']]}, {cfg['source']}); golden files are named after it")
        seen[cfg["name"]] = cfg["source"]
    return configs


@click.group("check")
def check() -> None:
    """Record and verify inference goldens of experiments (yours or dynbench's)."""


@check.command("record")
@click.argument("configs", nargs=-1, required=True)
@click.option("--goldens", "goldens_dir", required=True, type=click.Path(file_okay=False), help="folder for the golden files")
@click.option("--config-dir", default=None, help="folder to look CONFIG names up in (else a path or a bundled config)")
def record(configs: tuple[str, ...], goldens_dir: str, config_dir: str | None) -> None:
    """Record the inference goldens of CONFIGS (experiment YAMLs) into --goldens."""
    import torch

    from benchmarks.goldens.inference import case_from_config, near_boundary_count, observe_case

    folder = Path(goldens_dir)
    loaded = _load_configs(configs, config_dir)
    check_writable(folder)
    torch.set_num_threads(1)  # the recording machine's threads do not matter; one is steadiest
    recordings = []
    for cfg in loaded:
        click.echo(f"recording {cfg['name']} ({cfg['model']['name']})", err=True)
        recordings.append(observe_case(case_from_config(cfg)))
    for recording in recordings:  # nothing is written until every config has been observed
        path = recording.write(folder)
        near = near_boundary_count(recording.doc)
        note = "" if not any(near.values()) else f"; near a decision boundary (exempt): {near}"
        click.echo(f"wrote {path}{note}")


@check.command("verify")
@click.argument("configs", nargs=-1)
@click.option("--goldens", "goldens_dir", required=True, type=click.Path(file_okay=False), help="folder holding the golden files")
@click.option("--config-dir", default=None, help="folder to look CONFIG names up in")
@click.option("--junit-xml", default=None, type=click.Path(dir_okay=False), help="also write a JUnit XML report")
def verify(configs: tuple[str, ...], goldens_dir: str, config_dir: str | None, junit_xml: str | None) -> None:
    """Verify the goldens of CONFIGS (default: every golden in --goldens). Exit 1 on drift."""
    from benchmarks.goldens.inference import verify_folder
    from benchmarks.goldens.report import format_mismatches, write_junit

    names = [cfg["name"] for cfg in _load_configs(configs, config_dir)] if configs else None
    if junit_xml:
        check_writable(Path(junit_xml).parent if str(Path(junit_xml).parent) else Path("."))
    results, times = verify_folder(goldens_dir, names, log=lambda line: click.echo(line, err=True))
    if junit_xml:
        write_junit(junit_xml, "dynbench check", results, times)
    moved = [m for ms in results.values() for m in ms]
    if moved:
        click.echo(format_mismatches(moved, goldens_dir, f"dynbench check record ... --goldens {goldens_dir}"), err=True)
        raise SystemExit(1)
    click.echo(f"{len(results)} golden(s) hold ({goldens_dir})")


__all__ = ["check"]
