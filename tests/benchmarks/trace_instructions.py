"""Trace overhead in machine instructions: LC-Net L on ResNet-56 at batch 1, counted by valgrind.

Timing ratios on a shared machine move by several percent between runs; an instruction count
does not. This script runs the same forward pass plain, traced with no counter, and traced as
the harness traces (default counter, a measurement run's cache and the model), each in its own
process under `valgrind --tool=callgrind` with counting switched on only around the measured
calls, and prints the instructions per forward pass and the trace's extra instructions.

    python -m tests.benchmarks.trace_instructions          # needs valgrind (callgrind_control)

Seeded weights (seed 0), L-Net controllers centred so that about half the blocks run, one
seeded random 8x8 input (a small input keeps the kernels' share small; the trace's work does not
depend on it): an instrument figure, not a finding about a method. Takes a few minutes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

MODES = ("plain", "no_counter", "traced")
FORWARDS = 3


def _child(mode: str) -> None:
    import torch

    from benchmarks.goldens.inference import centre_controllers
    from benchmarks.registry import create_model
    from benchmarks.routing import set_engine, trace

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("lcnet_l_cifar_resnet56", num_classes=10, in_chans=1).eval()
    set_engine(model, "sparse")
    inputs = torch.randn(8, 1, 8, 8)
    centre_controllers(model, inputs)
    x = inputs[:1]
    cache: dict = {}

    def forward() -> object:
        with torch.no_grad():
            if mode == "plain":
                return model(x)
            kwargs = {"counter": None} if mode == "no_counter" else {"cache": cache, "model": model}
            with trace(batch_size=1, **kwargs) as t:
                model(x)
            return t.macs_executed, t.macs_controller, t.units_executed

    for _ in range(3):  # warm: the cache holds every path this input takes
        forward()
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
    for _ in range(FORWARDS):
        forward()
    subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)


def _count(mode: str, workdir: str) -> subprocess.Popen:
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={os.path.join(workdir, mode + '.out')}",
        sys.executable, "-m", "tests.benchmarks.trace_instructions", "--child", mode,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        runs = {mode: _count(mode, workdir) for mode in MODES}
        counts = {}
        for mode, run in runs.items():
            _, err = run.communicate()
            found = re.findall(r"Collected : (\d+)", err)
            if run.returncode or not found:
                raise SystemExit(f"valgrind run '{mode}' failed:\n{err[-2000:]}")
            counts[mode] = int(found[-1]) / FORWARDS
    plain = counts["plain"]
    for mode in MODES:
        extra = counts[mode] - plain
        print(f"{mode:11s} {counts[mode] / 1e6:8.3f} M instructions per forward   trace's extra {extra / 1e6:6.3f} M")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        main()
