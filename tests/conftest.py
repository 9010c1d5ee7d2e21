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
