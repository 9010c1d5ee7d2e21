"""The environment record attached to every run, result row and latency row.

It says what produced a number: library versions, device, threads, the CPU kernels dispatched
to (ATen capability, oneDNN, BLAS), numeric flags and the git
commit. `environment_hash` is a short stable digest of the fields that can change a result.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from benchmarks.io import canonical_json, sha256_bytes

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _version(distribution: str) -> str | None:
    """The installed version, read from package metadata (importing timm/torchvision is slow)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def git_commit(path: Path = _REPO_ROOT) -> str | None:
    """The checkout's HEAD commit, with '-dirty' when tracked files are modified."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path, capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: environment variables that change which CPU kernels PyTorch, oneDNN and MKL run
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS")


@functools.lru_cache(maxsize=1)
def cpu_kernels() -> dict[str, Any]:
    """Which CPU kernels this process dispatches to: ATen's CPU capability, the oneDNN and BLAS
    builds, and the environment variables that force them (last-bit differences between
    these are why training outcomes differ across machines)."""
    config = torch.__config__.show()
    onednn = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([\w.]+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    blas_name = blas.group(1) if blas else None
    if blas_name == "mkl" and mkl:
        blas_name = f"mkl {mkl.group(1)}"
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": onednn.group(1) if onednn else None,
        "blas": blas_name,
        "kernel_env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
    }


def environment_record(device: str | torch.device = "cpu", **extra: Any) -> dict[str, Any]:
    """Everything that can change a measured number, as plain JSON-able values."""
    device = torch.device(device)
    record: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,  # the running build, local tag (+cu130) included
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "numpy": _version("numpy"),
        "device_type": device.type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        **cpu_kernels(),
        "git_commit": git_commit(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        record["device_name"] = props.name
        record["device_capability"] = f"{props.major}.{props.minor}"
        record["driver"] = _cuda_driver()
    else:
        record["device_name"] = record["cpu"]
    record.update(extra)
    return record


def _cuda_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


_VOLATILE = {"git_commit", "torch_interop_threads"}


def environment_hash(record: dict[str, Any]) -> str:
    """Short digest of the record's result-relevant fields (commit excluded: it has its own column)."""
    stable = {k: v for k, v in record.items() if k not in _VOLATILE}
    return sha256_bytes(canonical_json(stable).encode())[:12]
