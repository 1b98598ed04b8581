"""Mamba-2's fused decode step (Triton: conv with its window, silu, dt softplus, state update, D skip)
against `ssd_conv_step_ref`, its PyTorch ops, and the `triton` backend's decode against the `torch`
backend's.

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set here when no CUDA GPU is
present) and on a GPU as it is. Shapes: 4 heads of P = 20 channels in 2 groups (a full block of 16
channels and a partial one per head), N = 6 padded to 8, a conv of width 4. xBC and dt are views of
one projection's output, as in the model. The kernel computes in fp32 whatever its inputs: bf16
inputs are checked against the reference on the same values in fp32, y at 1e-2 (rounded to bf16,
2^-9 per element), the state at 1e-5 and the window exactly (it is a copy).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from altbench import registry  # noqa: E402
from altbench.kernels.ssd_step import ssd_conv_step, ssd_conv_step_ref  # noqa: E402
from conftest import assert_close  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(Bsz, H, P, N, G, K, dtype, seed=0):
    """z, xBC, dt as pieces of one in_proj output; dt around -3 before softplus (about 0.05) with one
    head past softplus's threshold 20; A = -(1..16), as Mamba-2's initialisation."""
    gen = torch.Generator().manual_seed(seed)
    channels = H * P + 2 * G * N
    proj = torch.randn(Bsz, H * P + channels + H, generator=gen)
    proj[:, -H:] -= 3
    window = torch.randn(Bsz, K - 1, channels, generator=gen)
    conv_weight = torch.randn(channels, K, generator=gen) / K
    conv_bias = torch.randn(channels, generator=gen) / 10
    dt_bias = torch.randn(H, generator=gen)
    dt_bias[0] = 30.0
    A = -torch.empty(H).uniform_(1, 16, generator=gen)
    D = torch.randn(H, generator=gen)
    h = torch.randn(Bsz, H, P, N, generator=gen)
    proj, window, conv_weight, conv_bias, dt_bias, D = (
        t.to(DEVICE, dtype) for t in (proj, window, conv_weight, conv_bias, dt_bias, D))
    _, xBC, dt = proj.split([H * P, channels, H], dim=-1)
    return xBC, dt, window, conv_weight, conv_bias, dt_bias, A.to(DEVICE), D, h.to(DEVICE), G


@pytest.mark.parametrize("dt_floor", [0.0, 0.07], ids=["no-floor", "floor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_step_matches_the_torch_step(dtype, dt_floor):
    inputs = make_inputs(2, 4, 20, 6, 2, 4, dtype)
    before = [t.clone() for t in (inputs[2], inputs[8])]
    y, h, window = ssd_conv_step(*inputs, dt_floor=dt_floor)
    ref_y, ref_h, ref_window = ssd_conv_step_ref(*(t.float() for t in inputs[:-1]), inputs[-1], dt_floor=dt_floor)
    assert y.shape == (2, 4, 20) and y.dtype == dtype and h.dtype == torch.float32 and window.dtype == dtype
    assert_close("y", ref_y, y, 1e-5 if dtype == torch.float32 else 1e-2)
    assert_close("state", ref_h, h, 1e-5)
    assert torch.equal(window.float(), ref_window)
    assert torch.equal(inputs[2], before[0]) and torch.equal(inputs[8], before[1])  # inputs not changed
    assert (ref_h - before[1]).norm() > 0.1 * ref_h.norm()  # the step moved the state


def test_triton_backend_decodes_as_the_torch_backend():
    torch.manual_seed(0)
    ref = registry.build("mamba2", "tiny", device=DEVICE).eval()
    fast = registry.build("mamba2", "tiny", device=DEVICE, backend="triton").eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, ref.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        states = [m.init_state(2) for m in (ref, fast)]
        for t in range(ids.shape[1]):
            (expected, states[0]), (logits, states[1]) = (m.step(ids[:, t], s) for m, s in zip((ref, fast), states))
            assert_close(f"logits at step {t}", expected, logits, 1e-5)
    for name, a, b in zip(("window", "state"), states[0][0], states[1][0]):
        assert_close(f"final {name}", a, b, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_the_kernel_compiles_and_replays_from_a_cuda_graph(scope):
    """torch.compile traces the user kernel, and the graph-replayed step is the eager one."""
    from altbench.measure.fastpath import fast_call, regions
    from altbench.measure.scenarios import decode_state, rewinder

    torch.manual_seed(0)
    model = registry.build("mamba2", "tiny", device="cuda", backend="triton").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 33), device="cuda")
    with torch.inference_mode():
        state = decode_state(model, ids, context=33, segment=0, headroom=8)
        rewind = rewinder(state)
        expected, _ = model.step(ids[:, -1], state)
        rewind()
        fast = fast_call(lambda tokens, state: model.step(tokens, state), (ids[:, -1], state), torch.device("cuda"),
                         compile=regions(model, "step", scope), graphs=True, rewind=rewind)
        assert fast.compiled and fast.cuda_graphs, fast.note
        logits, _ = fast.call()
    assert_close("graphed step", expected, logits, 1e-4)
