"""Run folders a user can trust: reused only when really finished and intact, named by
everything that changes their numbers, and trained by one process at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from benchmarks.config import resolve_config
from benchmarks.engine import Trainer
from benchmarks.evaluation import finalize_run
from benchmarks.runs import RunFolder, run_lock, single_seed_config

TINY = {
    "name": "tiny",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16], "depth": 1}},
    "dataset": {"name": "digits"},
    "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
}


def _finished(tmp_path) -> RunFolder:
    trainer = Trainer(resolve_config(TINY), 0, runs_root=tmp_path, device="cpu", progress=False, log=lambda m: None)
    trainer.fit()
    finalize_run(trainer.run)
    return trainer.run


@pytest.mark.parametrize(
    ("name", "damage", "problem"),
    [
        ("results.csv", lambda p: p.write_text(p.read_text()[:40]), "results.csv does not match its recorded sha256"),
        ("metrics.json", lambda p: p.write_text(p.read_text()[:-20]), "metrics.json does not match"),
        ("checkpoints/best.safetensors", lambda p: p.unlink(), "checkpoints/best.safetensors is missing"),
        ("complete.json", lambda p: p.unlink(), "not finished"),
        ("complete.json", lambda p: p.write_text("{"), "completion record is unreadable"),
    ],
)
def test_a_damaged_finished_run_is_not_reused(tmp_path, name, damage, problem):
    run = _finished(tmp_path)
    assert run.is_complete()
    rows_before = (run.path / "results.csv").read_text()
    damage(run.path / name)
    assert problem in run.completion_problem()
    if name != "checkpoints/best.safetensors":  # evaluating again repairs it, identically
        finalize_run(run)
        assert run.is_complete() and (run.path / "results.csv").read_text() == rows_before


def test_the_thread_count_and_device_are_part_of_the_run_identity():
    cfg = single_seed_config(resolve_config(TINY), 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = RunFolder.for_config(cfg, "runs", "cpu")
        torch.set_num_threads(2)
        two = RunFolder.for_config(cfg, "runs", "cpu")
    finally:
        torch.set_num_threads(before)
    assert one != two and one.path.name.startswith("tiny-s0-") and two.path.name.startswith("tiny-s0-")
    assert RunFolder.for_config(cfg, "runs", "cuda") not in (one, two)


def test_the_cpu_kernel_capability_is_part_of_the_run_identity(monkeypatch):
    cfg = single_seed_config(resolve_config(TINY), 0)
    names = set()
    for capability in ("AVX2", "AVX512"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        names.add(RunFolder.for_config(cfg, "runs", "cpu").path.name)
    assert len(names) == 2


def test_the_run_lock_is_reentrant_and_released(tmp_path):
    with run_lock(tmp_path / "run"), run_lock(tmp_path / "run"):
        assert "process" in (tmp_path / "run" / ".lock").read_text()
    # a lock held by a process that died is released by the kernel: taking it does not block
    code = "import os; from benchmarks.runs import run_lock\nwith run_lock(os.environ['RUN']): os._exit(9)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "RUN": str(tmp_path / "dead")}, check=False)
    start = time.perf_counter()
    with run_lock(tmp_path / "dead"):
        pass
    assert time.perf_counter() - start < 5


@pytest.mark.slow
def test_two_processes_on_one_run_train_it_once(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 3}}))
    cmd = [sys.executable, "-m", "benchmarks.cli", "train", str(config), "--device", "cpu", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    logs = "".join(out + err for out, err in outputs)
    assert logs.count("train epoch 3/3") == 1, "the run was trained twice"
    assert "finished already: reused" in logs


def test_the_main_job_does_not_overwrite_tracked_reference_results(tmp_path, capsys):
    """In a checkout, `reproduce` refuses to overwrite the suite's tracked tables or figures
    unless asked to (--update-reference), and names them; untracked outputs are fine."""
    from benchmarks.cli import main
    from benchmarks.suites import tracked_outputs

    repo = tmp_path / "checkout"
    (repo / "results" / "tables").mkdir(parents=True)
    (repo / "results" / "tables" / "quick.md").write_text("reference\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "results/tables/quick.md"], check=True)
    assert tracked_outputs(repo / "results", "quick") == ["results/tables/quick.md"]
    assert tracked_outputs(repo / "other", "quick") == [] and tracked_outputs(tmp_path / "elsewhere", "quick") == []
    before = sorted(p.name for p in repo.rglob("*") if ".git" not in p.parts)
    try:
        main(["reproduce", "quick", "--out", str(repo / "results")])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "would overwrite 1 reference file(s)" in err and "results/tables/quick.md" in err
    assert "--update-reference" in err
    assert sorted(p.name for p in repo.rglob("*") if ".git" not in p.parts) == before
