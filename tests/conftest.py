"""Shared test configuration: markers that skip cleanly when a resource is absent."""

from __future__ import annotations

import pytest
import torch


def _fashion_mnist_present() -> bool:
    from benchmarks.data import dataset_status

    return dataset_status("fashion-mnist") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs CUDA")
    no_fmnist = pytest.mark.skip(
        reason="needs the real Fashion-MNIST files: apt-get install dataset-fashion-mnist"
    )
    fmnist = None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "fashion_mnist" in item.keywords:
            if fmnist is None:
                fmnist = _fashion_mnist_present()
            if not fmnist:
                item.add_marker(no_fmnist)


@pytest.fixture(autouse=True)
def _isolated_dynbench_data(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """Tests never read the user's ~/.cache/dynbench or $DYNBENCH_DATA, and never download."""
    monkeypatch.delenv("DYNBENCH_DATA", raising=False)
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """One intra-op thread, as tox sets OMP_NUM_THREADS=1 and the goldens were pinned: the
    test models are tiny, a second thread only adds synchronisation on a shared 2-core
    machine (measured 0.02 s vs 0.8 s per step), and float sums then match the goldens."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
