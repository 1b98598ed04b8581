import os

import pytest
import torch

# lm-eval / datasets write caches under ~/.cache/huggingface: keep tests hermetic and offline.
os.environ.setdefault("HF_HOME", os.path.join(os.path.dirname(__file__), ".hf_home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float) -> None:
    """Relative error ||out - ref|| / ||ref|| below `rtol` (one helper for every equivalence test)."""
    err = ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"
