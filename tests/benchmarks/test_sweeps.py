"""Sweeps as data (`sweep:` in an experiment YAML) and runs in several local processes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from benchmarks.config import config_hash, load_config, resolve_config
from benchmarks.errors import ConfigError
from benchmarks.sweeps import expand

BASE = {
    "name": "tiny",
    "model": {"name": "digits_cnn", "kwargs": {"widths": [4, 8], "depth": 1}},
    "dataset": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 64},
}


def test_a_sweep_expands_into_one_named_content_addressed_config_per_point():
    cfg = resolve_config({**BASE, "sweep": {"train.optimizer.lr": [0.05, 0.1], "model.kwargs.depth": [1, 2]}})
    points = expand(cfg)
    assert [p["name"] for p in points] == ["tiny--lr0.05-depth1", "tiny--lr0.05-depth2", "tiny--lr0.1-depth1", "tiny--lr0.1-depth2"]
    assert [(p["train"]["optimizer"]["lr"], p["model"]["kwargs"]["depth"]) for p in points] == [(0.05, 1), (0.05, 2), (0.1, 1), (0.1, 2)]
    assert len({config_hash(p) for p in points}) == 4 and all("sweep" not in p for p in points)
    assert all(p["sweep_of"] == "tiny" for p in points)
    assert expand(resolve_config(BASE)) == [resolve_config(BASE)]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"train.learning_rate": [0.1]}, "sweep over unknown key 'train.learning_rate'"),
        ({"train.epochs": []}, "sweep key 'train.epochs' needs a non-empty list of values"),
        ({"train.epochs": 3}, "needs a non-empty list of values"),
        ({}, "key 'sweep' is empty"),
        ({"name": ["a", "b"]}, "cannot be swept"),
        ({"train.epochs": [0, 1]}, "key 'train.epochs' must be a positive integer"),
    ],
)
def test_bad_sweeps_are_refused(sweep, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(resolve_config({**BASE, "sweep": sweep}))


def test_a_grid_of_more_than_10000_points_needs_a_yes():
    cfg = resolve_config({**BASE, "sweep": {"method_args.a": list(range(101)), "method_args.b": list(range(100))}})
    with pytest.raises(ConfigError, match="10,100 points .* pass --yes"):
        expand(cfg)
    assert len(expand(cfg, confirm_above=None)) == 10_100


def test_train_runs_every_point_of_a_sweep(tmp_path, capsys):
    from benchmarks.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sweep": {"train.optimizer.lr": [0.05, 0.1]}}))
    main(["train", str(path), "--device", "cpu", "--out", str(tmp_path / "out"), "--no-eval"])
    names = sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "out" / "runs").iterdir())
    assert names == ["tiny--lr0.05", "tiny--lr0.1"]
    assert load_config(path)["sweep"] == {"train.optimizer.lr": [0.05, 0.1]}


def test_reproduce_refuses_jobs_0(tmp_path, capsys):
    from benchmarks.cli import main

    with pytest.raises(SystemExit) as info:
        main(["reproduce", "quick", "--jobs", "0", "--out", str(tmp_path / "out")])
    assert info.value.code == 2 and "--jobs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_jobs_2_gives_the_rows_of_the_in_process_run(tmp_path):
    """`reproduce --jobs 2` (one thread per process, parents first) collects the same rows as
    a one-thread in-process run: same run folders, same numbers."""
    from benchmarks.suites import reproduce

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = reproduce("quick", out=tmp_path / "serial", log=lambda m: None, latency=False)
        parallel = reproduce("quick", out=tmp_path / "parallel", jobs=2, log=lambda m: None, latency=False)
    finally:
        torch.set_num_threads(before)
    assert parallel.trained == serial.trained == len(serial.runs) == 8  # 4 experiments + a 4-point LC-Net sweep
    assert [p.name for p in serial.runs] == [p.name for p in parallel.runs]
    columns = ["experiment", "split", "protocol", "budget_images", "accuracy", "macs_mean", "params"]
    a = pd.read_csv(serial.rows_file)[columns]
    b = pd.read_csv(parallel.rows_file)[columns]
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_submitit_local_runs_the_sweep_as_jobs_and_collects_the_same_rows(tmp_path):
    """The cluster path (submitit, here its local executor) runs the quick suite, whose LC-Net
    sweep has 4 points, as one job per run and collects the rows of the in-process run."""
    pytest.importorskip("submitit")
    from benchmarks.suites import reproduce

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = reproduce("quick", out=tmp_path / "serial", log=lambda m: None, latency=False)
        cluster = reproduce("quick", out=tmp_path / "cluster", jobs=4, launcher="submitit-local", threads=1,
                            log=lambda m: None, latency=False)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert cluster.trained == serial.trained == 8
    jobs = [p for p in (tmp_path / "cluster" / "submitit").iterdir() if p.is_dir()]
    assert len(jobs) >= 8, "each run is a job of its own"
    columns = ["experiment", "split", "protocol", "budget_images", "accuracy", "macs_mean", "params"]
    a = pd.read_csv(serial.rows_file)[columns]
    b = pd.read_csv(cluster.rows_file)[columns]
    pd.testing.assert_frame_equal(a, b)
    assert a["experiment"].str.startswith("digits_resnet20_lc--rho").sum() == 8  # 4 points x val/test


def test_a_cluster_launcher_without_submitit_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import sys

    from benchmarks.cli import main

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "quick", "--launcher", "slurm", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "needs submitit" in err and "pip install submitit" in err
    assert not (tmp_path / "out").exists()


def test_workers_end_when_the_reproduce_process_is_killed(tmp_path):
    """A killed `reproduce --jobs N` leaves no worker running on with its queued runs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from benchmarks.suites import _exit_with_parent\n"
        "def work(path):\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                               initializer=_exit_with_parent, initargs=(os.getpid(), 0.1))\n"
        "    pool.submit(work, sys.argv[1])\n"
        "    time.sleep(60)\n"
    )
    marker = tmp_path / "worker.pid"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([sys.executable, str(script), str(marker)], env=env)
    try:
        for _ in range(300):
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.1)
        worker = int(marker.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        for _ in range(100):
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            _reap(worker)
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker ran on after its parent was killed")
    finally:
        if parent.poll() is None:
            parent.kill()


def _reap(pid: int) -> None:
    """A worker reparented to this process (a subreaper) must be waited for to vanish."""
    import os

    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
