"""The harness's final evaluation of a run: the only place `test` is evaluated.

After training selects a checkpoint on `val`, `finalize_run` loads it, evaluates `val` and
`test` once, counts parameters (and, for every model, MACs through `benchmarks.cost`), and
writes the run's `metrics.json` and `results.csv` rows.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from benchmarks.config import config_hash
from benchmarks.cost import count_params, measure_split_costs
from benchmarks.data import load_split
from benchmarks.engine import get_method, load_selected_model
from benchmarks.engine.batches import eval_batches
from benchmarks.environment import environment_hash, environment_record
from benchmarks.protocol import budget_or_none, protocol_of_config
from benchmarks.registry import get_model_spec
from benchmarks.results import make_row, write_results
from benchmarks.runs import RunFolder


def evaluate_split(model: torch.nn.Module, method, dataset, batch_size: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = method.evaluate(model, eval_batches(dataset, batch_size))
    model.train(was_training)
    return metrics


def finalize_run(
    run: RunFolder, data_root: str | os.PathLike | None = None, cost: bool = True
) -> list[dict[str, Any]]:
    """Evaluate the selected checkpoint on val and test; write metrics.json and results.csv,
    then the completion record (under the run folder's lock)."""
    with run.lock():
        return _finalize(run, data_root, cost)


def _finalize(run: RunFolder, data_root: str | os.PathLike | None, cost: bool) -> list[dict[str, Any]]:
    cfg = run.load_config()
    method = get_method(cfg["method"])(cfg)
    model = load_selected_model(run)
    dataset = cfg["dataset"]["name"]
    batch = cfg["train"]["eval_batch_size"]
    spec = get_model_spec(model.arch_config["name"])
    env = environment_record("cpu")
    protocol = protocol_of_config(cfg)
    budget = budget_or_none(cfg)
    metrics: dict[str, Any] = {"selected": _selected(run), "splits": {}}
    rows = []
    for split in ("val", "test"):
        data = load_split(dataset, split, data_root, options=cfg["dataset"].get("options") or None)
        split_metrics = evaluate_split(model, method, data, batch)
        cost_summary = _cost(model, data, batch) if cost else {}
        split_metrics.update(cost_summary)
        metrics["splits"][split] = split_metrics
        rows.append(
            make_row(
                suite=cfg.get("suite"),
                experiment=cfg["name"],
                model=spec.name,
                kind=method.result_kind or spec.kind,
                method=cfg["method"],
                variant=spec.variant,
                dataset=dataset,
                protocol=protocol.id,
                budget_images=budget,
                split=split,
                seed=cfg["seed"],
                accuracy=split_metrics.get("accuracy"),
                f1=split_metrics.get("f1"),
                params=count_params(model),
                selected_epoch=metrics["selected"].get("epoch"),
                config_hash=config_hash(cfg),
                git_commit=env.get("git_commit"),
                env_hash=environment_hash(env),
                run_dir=str(run.path),
                **cost_summary,
            )
        )
    metrics["params"] = count_params(model)
    run.completion_file.unlink(missing_ok=True)  # re-evaluating: not finished until rewritten
    write_results(rows, run.results_file)
    run.write_metrics(metrics)
    run.mark_complete()
    return rows


def _selected(run: RunFolder) -> dict[str, Any]:
    from benchmarks.engine.checkpoint import read_arch

    return dict(read_arch(run.checkpoint_dir / "best").get("meta", {}))


def _cost(model: torch.nn.Module, dataset, batch_size: int) -> dict[str, Any]:
    """Per-sample executed / theoretical / controller MACs over the split (benchmarks.cost)."""
    return measure_split_costs(model, dataset, batch_size=batch_size).as_result_columns()
