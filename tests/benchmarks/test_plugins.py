"""Users' own models: an external package with a `dynbench.models` entry point, built and
installed (pip, no network) in a temporary folder, then listed, recorded and verified with
`dynbench check`, and caught when one of its layers changes. Plus the bad plugins: one whose
import fails, two that claim one id, and the laziness of plugin imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

MODEL_SOURCE = '''
import torch.nn as nn

from benchmarks.registry import register_model

MARKER = {marker!r}
if MARKER:
    open(MARKER, "w").close()


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@register_model({model_id!r}, paper="an outside lab's model", variant="tiny", datasets=("digits",))
def tiny(num_classes: int = 10, in_chans: int = 1) -> TinyNet:
    return TinyNet(num_classes, in_chans)
'''

CONFIG = """\
name: {name}
description: an experiment of an outside package, checked by dynbench in its own CI
model:
  name: {model_id}
dataset:
  name: digits
train:
  epochs: 1
  batch_size: 64
"""


def build_package(root: Path, dist: str, model_id: str, *, marker: str = "", broken: bool = False) -> Path:
    """A source tree with a pyproject.toml declaring the entry point, one model module."""
    package = dist.replace("-", "_")
    src = root / dist
    (src / package).mkdir(parents=True)
    (src / package / "__init__.py").write_text("", encoding="utf-8")
    body = MODEL_SOURCE.format(marker=marker, model_id=model_id)
    if broken:
        body = "import a_module_that_does_not_exist\n" + body
    (src / package / "models.py").write_text(body, encoding="utf-8")
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1.0"

        [project.entry-points."dynbench.models"]
        {package} = "{package}.models"

        [tool.setuptools]
        packages = ["{package}"]
        """), encoding="utf-8")  # fmt: skip
    return src


def install(src: Path, target: Path) -> None:
    """pip install without network or build isolation, into `target` (on PYTHONPATH later)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip


def dynbench(args: list[str], target: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "benchmarks.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _ok(proc: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_external_package_goldens_record_verify_and_catch_a_changed_layer(tmp_path):
    start = time.perf_counter()
    target = tmp_path / "site"
    marker = tmp_path / "imported"
    install(build_package(tmp_path / "src", "outside-lab-models", "outside_tiny", marker=str(marker)), target)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "outside_digits.yaml").write_text(CONFIG.format(name="outside_digits", model_id="outside_tiny"), encoding="utf-8")

    # listed by dynbench, and imported only when models are asked for
    _ok(dynbench(["--help"], target, tmp_path))
    assert not marker.exists(), "the plugin was imported before any model was asked for"
    listed = _ok(dynbench(["models", "outside_*"], target, tmp_path))
    assert "outside_tiny" in listed.stdout and "outside-lab-models" in listed.stdout and marker.exists()

    goldens = tmp_path / "goldens"
    _ok(dynbench(["check", "record", "outside_digits", "--config-dir", str(configs), "--goldens", str(goldens)], target, tmp_path))
    assert sorted(p.name for p in goldens.iterdir()) == [
        "outside_digits.inputs.safetensors", "outside_digits.json", "outside_digits.safetensors"]
    report = tmp_path / "reports" / "goldens.xml"
    report.parent.mkdir()
    _ok(dynbench(["check", "verify", "--goldens", str(goldens), "--junit-xml", str(report)], target, tmp_path))
    assert 'failures="0"' in report.read_text(encoding="utf-8")

    # a changed layer (ReLU -> Tanh) in the installed package: verify fails with the diff
    module = next(target.glob("outside_lab_models/models.py"))
    module.write_text(module.read_text(encoding="utf-8").replace("nn.ReLU()", "nn.Tanh()"), encoding="utf-8")
    moved = _ok(dynbench(["check", "verify", "outside_digits", "--config-dir", str(configs), "--goldens", str(goldens),
                          "--junit-xml", str(report)], target, tmp_path), 1)  # fmt: skip
    assert "golden number(s) moved" in moved.stderr and "outside_digits" in moved.stderr and "logit" in moved.stderr
    assert 'failures="1"' in report.read_text(encoding="utf-8")
    print(f"external-package test: {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_bad_plugins_and_bad_check_input(tmp_path):
    target = tmp_path / "site"
    install(build_package(tmp_path / "src", "broken-models", "broken_tiny", broken=True), target)
    proc = _ok(dynbench(["models", "digits_*"], target, tmp_path), 2)
    assert "digits_cnn" in proc.stdout, "the other models must still be listed"
    assert "plugin 'broken_models'" in proc.stderr and "ModuleNotFoundError" in proc.stderr and "Traceback" not in proc.stderr

    clash = tmp_path / "clash"
    install(build_package(tmp_path / "src2", "lab-a-models", "shared_id"), clash)
    install(build_package(tmp_path / "src3", "lab-b-models", "shared_id"), clash)
    proc = _ok(dynbench(["models"], clash, tmp_path), 2)
    assert "'shared_id' is registered by both" in proc.stderr
    assert "lab-a-models" in proc.stderr and "lab-b-models" in proc.stderr and "Traceback" not in proc.stderr

    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = _ok(dynbench(["check", "record", "x", "--config-dir", str(tmp_path / "nowhere"), "--goldens", str(tmp_path / "g")], clash, tmp_path), 2)
    assert "--config-dir" in proc.stderr and "does not exist" in proc.stderr
    proc = _ok(dynbench(["check", "verify", "--goldens", str(tmp_path / "nowhere")], clash, tmp_path), 2)
    assert "does not exist" in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "bad input wrote files"
