"""Result rows round-trip through CSV; writes are atomic; run folders are content-addressed."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from benchmarks.config import resolve_config
from benchmarks.errors import OutputError
from benchmarks.io import atomic_write_text, confined_path
from benchmarks.results import (
    RESULT_COLUMNS,
    make_row,
    read_results,
    results_frame,
    to_latex,
    to_markdown,
    write_results,
)
from benchmarks.runs import RunFolder, single_seed_config


def _row(**kw):
    base = dict(experiment="e", model="digits_cnn", kind="static", dataset="digits", split="test", seed=0, accuracy=97.5, macs_mean=123456.0, params=16794, simulated_savings=False)
    base.update(kw)
    return make_row(**base)


def test_results_round_trip_with_fixed_dtypes(tmp_path):
    rows = [_row(), _row(split="val", accuracy=None, simulated_savings=None)]
    path = write_results(rows, tmp_path / "r.csv")
    frame = read_results(path)
    pd.testing.assert_frame_equal(frame, results_frame(rows))
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert frame.loc[0, "params"] == 16794 and frame.loc[0, "accuracy"] == 97.5


def test_unknown_result_column_is_an_error():
    with pytest.raises(ValueError, match="acuracy"):
        make_row(acuracy=1.0)


def test_markdown_and_latex_render_every_row():
    frame = results_frame([_row(), _row(seed=1)])
    md = to_markdown(frame, ["model", "seed", "accuracy", "macs_mean"])
    assert md.count("\n") == 4 and "0.123M" in md and "97.50" in md
    tex = to_latex(frame, ["model", "accuracy"])
    assert r"digits\_cnn" in tex and tex.count(r"\\") == 3


def test_atomic_write_leaves_old_file_when_the_writer_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "temporary file left behind"


def test_output_folder_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot create output folder"):
        atomic_write_text(blocker / "tables" / "x.md", "x")


def test_read_only_output_folder_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("root can write into a read-only folder; the file case above covers root")
        with pytest.raises(OutputError):
            atomic_write_text(locked / "sub" / "x.txt", "x")
    finally:
        locked.chmod(0o700)


def test_confined_path_refuses_escapes(tmp_path):
    assert confined_path(tmp_path, "a/b.json") == (tmp_path / "a/b.json").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(OutputError, match="escapes"):
            confined_path(tmp_path, bad)


def test_run_folder_is_named_by_config_hash_and_seed(tmp_path):
    cfg = resolve_config({"name": "t", "model": {"name": "digits_cnn"}, "dataset": {"name": "digits"}, "train": {"epochs": 1}})
    a = RunFolder.for_config(single_seed_config(cfg, 0), tmp_path)
    b = RunFolder.for_config(single_seed_config(cfg, 1), tmp_path)
    again = RunFolder.for_config(single_seed_config(cfg, 0), tmp_path)
    assert a == again and a != b
    assert a.path.name.startswith("t-s0-") and len(a.path.name.split("-")[-1]) == 12


def test_a_diverged_metric_is_written_as_null(tmp_path):
    import json

    from benchmarks.runs import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_metrics({"splits": {"val": {"loss": float("nan"), "accuracy": 10.0}}, "x": [float("inf")]})
    doc = json.loads(folder.metrics_file.read_text())
    assert doc == {"splits": {"val": {"loss": None, "accuracy": 10.0}}, "x": [None]}
