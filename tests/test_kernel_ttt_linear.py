"""Triton forward of TTT-Linear's whole inner mini-batches (kernels/ttt_linear.py) against its
PyTorch form `ttt_whole` (itself checked against the token loop in test_ttt.py): outputs and the
final inner weights, and the whole model on backend triton against backend torch, across segments
that start and end inside mini-batches (those ends stay in PyTorch).

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set here when no CUDA GPU is
present; its dots are exact fp32) and on a GPU as it is (tf32 dots: 1e-2 relative)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from altbench import registry  # noqa: E402
from altbench.kernels.ttt_linear import ttt_linear_whole  # noqa: E402
from altbench.models.ttt import ttt_whole  # noqa: E402
from conftest import assert_close  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-5 if DEVICE == "cpu" else 1e-2


@pytest.mark.parametrize("B, H, N, F, b", [(2, 2, 3, 16, 16), (1, 3, 2, 32, 16)], ids=["B2-H2-N3-F16-b16", "B1-H3-N2-F32-b16"])
def test_kernel_equals_the_pytorch_whole_mini_batches(B, H, N, F, b):
    g = torch.Generator().manual_seed(0)
    q, k, target = (torch.randn(B, H, N * b, F, generator=g) for _ in range(3))
    lr = 0.2 + 0.8 * torch.rand(B, H, N * b, generator=g)
    scale = 1 / torch.arange(1.0, b + 1) + 0.1 * torch.rand(b, generator=g)
    ln_weight, ln_bias = 1 + 0.2 * torch.randn(H, F, generator=g), 0.2 * torch.randn(H, F, generator=g)
    weights = (0.5 * torch.randn(B, H, F, F, generator=g), 0.5 * torch.randn(B, H, F, generator=g))
    args = [t.to(DEVICE) for t in (q, k, target, lr, scale, ln_weight, ln_bias)]
    weights = tuple(w.to(DEVICE) for w in weights)
    z_ref, (W_ref, c_ref) = ttt_whole(weights, *args, 1e-6, b)
    z, (W, c) = ttt_linear_whole(weights, *args, 1e-6, b)
    assert_close("Z_q", z_ref, z, RTOL)
    assert_close("W", W_ref, W, RTOL)
    assert_close("c", c_ref, c, RTOL)


def test_model_on_triton_equals_torch_across_segments():
    torch.manual_seed(0)
    torch_model = registry.build("ttt-linear", "tiny", device=DEVICE).eval()  # b = 16, F = 16
    triton_model = registry.build("ttt-linear", "tiny", device=DEVICE, backend="triton").eval()
    triton_model.load_state_dict(torch_model.state_dict())
    x = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        expected, _ = torch_model(x)
        state, parts = None, []
        for segment in x.split([37, 33], dim=1):  # 2 whole + 5 open; 11 to close it, 1 whole, 6 open
            logits, state = triton_model(segment, state)
            parts.append(logits)
    assert_close("triton model", expected, torch.cat(parts, 1), RTOL)


def test_kernel_refuses_to_train():
    model = registry.build("ttt-linear", "tiny", device=DEVICE, backend="triton")
    with pytest.raises(RuntimeError, match="forward-only; train TTT-Linear on backend torch"):
        model(torch.zeros(1, 32, dtype=torch.long, device=DEVICE))
