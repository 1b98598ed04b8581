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
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from altbench import registry  # noqa: E402
from altbench.kernels.selective_step import selective_step, selective_step_ref  # noqa: E402
from conftest import assert_close  # noqa: E402

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
    torch.manual_seed(0)
    ref = registry.build("mamba", "tiny", device=DEVICE).eval()
    fast = registry.build("mamba", "tiny", device=DEVICE, backend="triton").eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, ref.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        states = [m.init_state(2) for m in (ref, fast)]
        for t in range(ids.shape[1]):
            (expected, states[0]), (logits, states[1]) = (m.step(ids[:, t], s) for m, s in zip((ref, fast), states))
            assert_close(f"logits at step {t}", expected, logits, 1e-5)
    assert_close("final state", states[0][0][1], states[1][0][1], 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_the_kernel_compiles_and_replays_from_a_cuda_graph(scope):
    """torch.compile traces the user kernel, and the graph-replayed step is the eager one."""
    from altbench.measure.fastpath import fast_call, regions
    from altbench.measure.scenarios import decode_state, rewinder

    torch.manual_seed(0)
    model = registry.build("mamba", "tiny", device="cuda", backend="triton").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 33), device="cuda")
    with torch.inference_mode():
        state = decode_state(model, ids, context=33, segment=0, headroom=8)
        expected, _ = model.step(ids[:, -1], state)
        fast = fast_call(lambda tokens, state: model.step(tokens, state), (ids[:, -1], state), torch.device("cuda"),
                         compile=regions(model, "step", scope), graphs=True, rewind=rewinder(state))
        assert fast.compiled and fast.cuda_graphs, fast.note
        logits, _ = fast.call()
    assert_close("graphed step", expected, logits, 1e-4)
