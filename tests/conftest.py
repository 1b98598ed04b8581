import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# lm-eval / datasets write caches under ~/.cache/huggingface: keep tests hermetic and offline.
os.environ.setdefault("HF_HOME", os.path.join(os.path.dirname(__file__), ".hf_home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Property tests run few examples by default so CI stays fast; `pytest --hypothesis-profile=thorough`
# runs many more (README.md, "Run the tests").
for name, examples in (("ci", 8), ("thorough", 300)):
    settings.register_profile(name, max_examples=examples, deadline=None, derandomize=name == "ci",
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("ci")


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
