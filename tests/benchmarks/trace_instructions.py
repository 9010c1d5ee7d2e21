"""Trace overhead in machine instructions: a ResNet-56-sized model at batch 1, counted by valgrind.

Timing ratios on a shared machine move by several percent between runs; an instruction count
does not. This script runs the same forward pass plain, traced with no counter, and traced as
the harness traces (default counter, a measurement run's cache and the model) — on one input
repeated (every path met before: the best case) and on a new input each time (as a measurement
run sees them: its blocks take other decisions) — each in its own process under `valgrind
--tool=callgrind` with counting switched on only around the measured calls, and prints the
instructions per forward pass and the trace's extra instructions over the plain pass on the
same inputs.

    python -m tests.benchmarks.trace_instructions [MODEL]   # needs valgrind (callgrind_control)

MODEL: one of `test_bench_routing`'s models (default `lcnet_l_cifar_resnet56`; the toy L-Net,
`toy_lnet_resnet56`, routes through `route` and ungated `GatedConv2d`s instead). Seeded weights
(seed 0), controllers centred so that about half the blocks run, seeded
random 8x8 inputs (a small input keeps the kernels' share small; the trace's work does not
depend on it): an instrument figure, not a finding about a method. Takes a few minutes.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import tempfile

#: (mode, whether each measured forward runs a new input); a new input takes other decisions
#: (paths the trace may not have met), as in a measurement run; its plain run is the reference
MODES = (("plain", False), ("no_counter", False), ("traced", False), ("plain", True), ("traced", True))
FORWARDS = 3


DEFAULT_MODEL = "lcnet_l_cifar_resnet56"


def _child(name: str, mode: str, new_inputs: bool) -> None:
    import torch

    from benchmarks.goldens.inference import centre_controllers
    from benchmarks.routing import set_engine, trace
    from tests.benchmarks.test_bench_routing import MODELS
    from tests.benchmarks.toy_models import calibrate

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    inputs = torch.randn(8, 1, 8, 8)
    (calibrate if name.startswith("toy") else centre_controllers)(model, inputs)
    set_engine(model, "sparse")
    fresh = torch.randn(3 + FORWARDS, 1, 8, 8).split(1)  # (after `inputs`: the same on every run)
    x = inputs[:1]
    cache: dict = {}

    def forward(x: torch.Tensor) -> object:
        with torch.no_grad():
            if mode == "plain":
                return model(x)
            kwargs = {"counter": None} if mode == "no_counter" else {"cache": cache, "model": model}
            with trace(batch_size=1, margins=False, **kwargs) as t:  # (as the cost harness traces)
                model(x)
            return t.value_table(), t.macs_by_kind_total

    for i in range(3):  # warm: the cache holds every path this input takes (or other inputs')
        forward(fresh[i] if new_inputs else x)
    # (the objects made so far — torch's, the model's — out of the collector's reach: a full
    # collection walks them all, millions of instructions that land in one run's window or not)
    gc.collect()
    gc.freeze()
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
    for i in range(FORWARDS):
        forward(fresh[3 + i] if new_inputs else x)
    subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)


def _count(name: str, mode: str, new_inputs: bool, workdir: str) -> subprocess.Popen:
    run = mode + ("_new" if new_inputs else "")
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={os.path.join(workdir, run + '.out')}",
        sys.executable, "-m", "tests.benchmarks.trace_instructions", "--child", name, mode,
        str(int(new_inputs)),
    ]  # fmt: skip
    # (a fixed hash seed: string hashes steer dict probing, which moves counts by ~0.1 M per run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def main(name: str) -> None:
    from tests.benchmarks.test_bench_routing import MODELS

    if name not in MODELS:
        raise SystemExit(f"unknown model '{name}'; choose from: {', '.join(sorted(MODELS))}")
    print(f"{name}, batch 1, {FORWARDS} forward passes per mode")
    with tempfile.TemporaryDirectory() as workdir:
        runs = {(mode, new): _count(name, mode, new, workdir) for mode, new in MODES}
        counts = {}
        for key, run in runs.items():
            _, err = run.communicate()
            found = re.findall(r"Collected : (\d+)", err)
            if run.returncode or not found:
                raise SystemExit(f"valgrind run {key} failed:\n{err[-2000:]}")
            counts[key] = int(found[-1]) / FORWARDS
    for (mode, new), count in counts.items():
        extra = count - counts[("plain", new)]
        inputs = "a new input each" if new else "one input repeated"
        print(f"{mode:11s} {inputs:18s} {count / 1e6:8.3f} M instructions per forward   trace's extra {extra / 1e6:6.3f} M")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4] == "1")
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL)
