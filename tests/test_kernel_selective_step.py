"""Mamba-1's fused decode step (Triton) against `selective_step_ref`, the PyTorch ops of the step
(dt_proj, softplus, `selective_scan_step`, gate), and the `triton` backend's decode against the
`torch` backend's.

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set here when no CUDA GPU is
present) and on a GPU as it is. Shapes: Di = 40 is a full block of 32 channels and a partial one;
R = 5 and N = 6 pad to 8. Inputs are views of one projection's output, as in the model. The kernel
computes in fp32 whatever its inputs: bf16 inputs are checked against the reference on the same
values in fp32, y at 1e-2 (it is rounded to bf16, 2^-9 per element) and h at 1e-5.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from altbench.kernels.selective_step import selective_step, selective_step_ref  # noqa: E402
from conftest import assert_close  # noqa: E402
from step_checks import assert_graphed_step_is_eager, decode_as_torch_backend  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(Bsz, Di, N, R, dtype, seed=0):
    """u, z: halves of an in_proj output; dt, B, C: pieces of an x_proj output; Delta's pre-activation
    around -3 (softplus about 0.05, Mamba's range) with a few channels past softplus's threshold 20."""
    gen = torch.Generator().manual_seed(seed)
    uz = torch.randn(Bsz, 2 * Di, generator=gen)
    dbc = torch.randn(Bsz, R + 2 * N, generator=gen)
    dt_weight = torch.randn(Di, R, generator=gen) / R**0.5
    dt_bias = torch.randn(Di, generator=gen) - 3
    dt_bias[:3] = 30.0
    A = -torch.exp(torch.randn(Di, N, generator=gen))
    D = torch.randn(Di, generator=gen)
    h = torch.randn(Bsz, Di, N, generator=gen)
    uz, dbc, dt_weight, dt_bias = (t.to(DEVICE, dtype) for t in (uz, dbc, dt_weight, dt_bias))
    u, z = uz.chunk(2, dim=-1)
    dt, B, C = dbc.split([R, N, N], dim=-1)
    return u, z, dt, dt_weight, dt_bias, A.to(DEVICE), B, C, D.to(DEVICE), h.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_step_matches_the_torch_step(dtype):
    inputs = make_inputs(2, 40, 6, 5, dtype)
    h_before = inputs[-1].clone()
    y, h = selective_step(*inputs)
    ref_y, ref_h = selective_step_ref(*(t.float() for t in inputs))
    assert y.shape == inputs[0].shape and y.dtype == dtype and h.dtype == torch.float32
    assert_close("y", ref_y, y, 1e-5 if dtype == torch.float32 else 1e-2)
    assert_close("state", ref_h, h, 1e-5)
    assert torch.equal(inputs[-1], h_before)  # the state passed in is not changed
    assert (ref_h - h_before).norm() > 0.1 * ref_h.norm()  # the step moved the state


def test_triton_backend_decodes_as_the_torch_backend():
    ref_states, fast_states = decode_as_torch_backend("mamba", "triton", DEVICE)
    assert_close("final state", ref_states[0][1], fast_states[0][1], 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_the_kernel_compiles_and_replays_from_a_cuda_graph(scope):
    """torch.compile traces the user kernel, and the graph-replayed step is the eager one."""
    assert_graphed_step_is_eager("mamba", scope, backend="triton")
