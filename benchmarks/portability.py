"""Portability matrix: the goldens under every CPU kernel setting, on one machine.

PyTorch picks its CPU kernels by the processor: ATen's vectorized kernels by
`ATEN_CPU_CAPABILITY` (default = no SIMD, avx2, avx512 where the CPU has it) and oneDNN's
convolutions by `ONEDNN_MAX_CPU_ISA`; the thread count changes summation order. Forcing them
one cell at a time reproduces, on one machine, the differences between the machines users run
on. Each cell runs in a fresh subprocess (the variables are read once, at import):

    python -m benchmarks.portability                 # inference goldens + training checks, every cell
    python -m benchmarks.portability --tier inference --jobs 2

It prints one line per cell and a table, and exits 1 if any cell fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ONEDNN_ISAS = ("SSE41", "AVX2", None)
THREADS = (1, 2)


@dataclass(frozen=True)
class Cell:
    capability: str
    onednn: str | None
    threads: int

    @property
    def label(self) -> str:
        return f"aten={self.capability} onednn={self.onednn or 'unset'} threads={self.threads}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
        env.update(ATEN_CPU_CAPABILITY=self.capability, OMP_NUM_THREADS=str(self.threads),
                   MKL_NUM_THREADS=str(self.threads), PYTHONHASHSEED="0")  # fmt: skip
        if self.onednn:
            env["ONEDNN_MAX_CPU_ISA"] = self.onednn
        return env


def capabilities() -> list[str]:
    """ATen capabilities this CPU can run: default and avx2 always (x86-64), avx512 if present."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()
    found = ["default", "avx2"]
    if best.startswith("avx512"):
        found.append("avx512")
    return found


def cells() -> list[Cell]:
    return [Cell(c, o, t) for c, o, t in itertools.product(capabilities(), ONEDNN_ISAS, THREADS)]


def _run_cell(cell: Cell, args: list[str], timeout: float) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.goldens", *args], env=cell.environment(),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, output = 124, f"timed out after {timeout:.0f} s"
    return code, output, time.perf_counter() - start


def _confirm_dispatch(cell: Cell) -> str:
    """The capability the subprocess really dispatched to (an unsupported request falls back)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=cell.environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out.stdout.strip()


def _say(line: str) -> None:
    print(line, flush=True)  # one line per cell as it ends, also when stdout is a pipe (CI)


def run_matrix(tiers: Sequence[str], jobs: int = 1, timeout: float = 900, log: Callable[[str], None] = _say) -> list[dict[str, Any]]:
    """Check `tiers` in every cell; one result dict per cell."""
    matrix = cells()
    tier_args = [a for t in tiers for a in ("--tier", t)]

    def one(cell: Cell) -> dict[str, Any]:
        dispatched = _confirm_dispatch(cell)
        code, output, seconds = _run_cell(cell, ["check", *tier_args], timeout)
        result = {"cell": cell.label, "dispatched": dispatched, "passed": code == 0, "exit": code, "seconds": round(seconds, 1), "output": output}
        log(f"{'PASS' if code == 0 else 'FAIL'}  {cell.label:<42} dispatched {dispatched:<8} {seconds:6.1f} s")
        if code != 0:
            log("\n".join("      " + line for line in output.strip().splitlines()[-30:]))
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, matrix))


def markdown_table(results: Sequence[dict[str, Any]], tiers: Sequence[str]) -> str:
    lines = [f"| cell | dispatched | {' + '.join(tiers)} | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['dispatched']} | {'pass' if r['passed'] else 'FAIL'} | {r['seconds']} |" for r in results]
    return "\n".join(lines)


def measure_bands(seeds: int = 3, jobs: int = 1, log: Callable[[str], None] = _say) -> dict[str, Any]:
    """Run every training check in every cell for `seeds` seeds; the training-checks golden."""
    from benchmarks.goldens import training

    tasks = [(cell, seed) for cell in cells() for seed in range(seeds)]
    measured: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="dynbench-bands-") as tmp:

        def one(task: tuple[Cell, int]) -> tuple[Cell, int, dict[str, Any]]:
            cell, seed = task
            out = Path(tmp) / f"{abs(hash((cell, seed)))}.json"
            code, output, seconds = _run_cell(cell, ["values", "--seed", str(seed), "--json", str(out)], 1800)
            if code != 0:
                raise RuntimeError(f"training checks failed in {cell.label}, seed {seed}:\n{output[-3000:]}")
            log(f"measured {cell.label} seed {seed} ({seconds:.0f} s)")
            return cell, seed, json.loads(out.read_text(encoding="utf-8"))

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for cell, seed, values in pool.map(one, tasks):
                for name, v in values.items():
                    measured.setdefault(name, []).append({"setting": cell.label, "seed": seed, "value": v["value"], "broken": v["broken"]})
    return training.document(measured)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.goldens import TIERS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.portability", description=__doc__.split("\n")[0])
    parser.add_argument("--tier", action="append", choices=TIERS, help="repeatable; default: inference and training")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once (two cells of two threads on two cores slow each other down fivefold)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    tiers = args.tier or ["inference", "training"]
    start = time.perf_counter()
    results = run_matrix(tiers, jobs=args.jobs)
    table = markdown_table(results, tiers)
    print(table)
    failed = sum(not r["passed"] for r in results)
    print(f"{len(results) - failed} of {len(results)} cells pass ({time.perf_counter() - start:.0f} s)")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
