"""Triton forward and backward of Mamba's selective scan against its fp32 loop reference
(`selective_scan_ref`): outputs, final states and, through torch.autograd, every gradient.

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set here when no CUDA GPU is
present; the interpreter takes 16-channel blocks of 4 tokens, so Di = 32 is two blocks and T = 37
ends in a partial chunk) and on a GPU as it is. Tolerances: 1e-5 relative in fp32 (the same sums
in another order; the GPU's exp2 is approximate to a few ulp); bf16 inputs give y rounded to bf16
(2^-9 relative per element), checked at 1e-2, and the fp32 state at 1e-5. The backward's
interpreter tiles are 16 tokens by 16 channels, so T = 37 ends in a partial tile.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from altbench.kernels.selective_scan import (  # noqa: E402
    _CT,
    _GRAD_BD,
    _CHUNK_PAD,
    _bulk_aligned,
    _chunk_scan_fwd,
    _grad_segment_length,
    _segment_length,
    _selective_scan_fwd,
    _SelectiveScan,
    selective_scan,
    selective_scan_ref,
)
from conftest import assert_close  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(B, T, Di, N, dtype=torch.float32, with_h0=False, seed=0):
    """Random u; Delta = softplus(N(-3, 1)) > 0 (about 0.06, Mamba's range); A = -exp(N(0, 1)) < 0;
    B, C, D; h0 or None. Some state entries decay slowly enough for h0 to reach the last token."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, Di, generator=gen)  # (B, T, Di)
    delta = F.softplus(torch.randn(B, T, Di, generator=gen) - 3)  # (B, T, Di)
    A = -torch.exp(torch.randn(Di, N, generator=gen))  # (Di, N)
    Bm = torch.randn(B, T, N, generator=gen)  # (B, T, N)
    Cm = torch.randn(B, T, N, generator=gen)  # (B, T, N)
    D = torch.randn(Di, generator=gen)  # (Di,)
    h0 = torch.randn(B, Di, N, generator=gen) if with_h0 else None  # (B, Di, N)
    to = lambda x, dt=torch.float32: None if x is None else x.to(DEVICE, dt)  # noqa: E731
    return to(u, dtype), to(delta, dtype), to(A), to(Bm, dtype), to(Cm, dtype), to(D), to(h0)


def check(inputs, out, rtol_y=1e-5, rtol_h=1e-5):
    ref_y, ref_h = selective_scan_ref(*inputs)
    y, h = out
    u, h0 = inputs[0], inputs[-1]
    assert y.shape == u.shape and y.dtype == u.dtype
    assert h.shape == ref_h.shape and h.dtype == torch.float32
    assert_close("y", ref_y, y, rtol_y)
    assert_close("state", ref_h, h, rtol_h)
    if h0 is not None:  # h0 must still weigh on the end state, or the case checks no more than h0 = 0
        assert (ref_h - selective_scan_ref(*inputs[:-1])[1]).norm() > 0.1 * ref_h.norm()


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("N", [8, 16], ids=["N8", "N16"])
def test_one_segment_matches_reference(N, with_h0):
    inputs = make_inputs(2, 37, 32, N, with_h0=with_h0)
    check(inputs, selective_scan(*inputs))


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
def test_segments_carry_the_state(with_h0):
    """Segments of 16 tokens (the public op takes one at this size): pass 1 writes the end states of
    the first two, the carry kernel turns them into entering states, pass 3 finishes the partial third."""
    inputs = make_inputs(2, 37, 32, 16, with_h0=with_h0, seed=1)
    check(inputs, _selective_scan_fwd(*inputs, segment_length=16)[:2])


@pytest.mark.parametrize("N", [16, 6], ids=["N16", "N6"])
def test_bf16_inputs(N):
    """bf16 B, C rows load as 32-bit (even, odd) pairs; N = 6 pads the state tiles to 4 pairs."""
    inputs = make_inputs(2, 37, 32, N, dtype=torch.bfloat16, with_h0=True, seed=2)
    check(inputs, _selective_scan_fwd(*inputs, segment_length=16)[:2], rtol_y=1e-2)


def test_odd_state_size():
    """N = 5 in fp32: B, C entries load one by one, the odd tile one entry shorter than the even."""
    inputs = make_inputs(1, 37, 32, 5, with_h0=True, seed=3)
    check(inputs, _selective_scan_fwd(*inputs, segment_length=16)[:2])


@pytest.mark.parametrize("dtype,N,rtol_y", [(torch.float32, 5, 1e-5), (torch.bfloat16, 16, 1e-2)], ids=["fp32-N5", "bf16-N16"])
def test_one_pass_forward(dtype, N, rtol_y):
    """`_chunk_scan_fwd`, the forward without a backward: T = 37 spans several chunks of _CHUNK_PAD
    tokens (8 in the interpreter: 4 lanes of 2) and ends in a partial one; Di = 5 ends in a partial
    channel block; h0 enters the first chunk through lane 0 and every later chunk from the last lane."""
    inputs = make_inputs(2, 37, 5, N, dtype=dtype, with_h0=True, seed=13)
    check(inputs, _chunk_scan_fwd(*inputs), rtol_y=rtol_y)


def test_one_pass_forward_single_partial_chunk():
    """Fewer tokens than one chunk: most lanes walk only padding (Delta = 0 keeps the state)."""
    inputs = make_inputs(1, _CHUNK_PAD // 2 - 1, 16, 8, seed=14)
    check(inputs, _chunk_scan_fwd(*inputs))


def test_bulk_prefetch_needs_aligned_rows():
    x = torch.zeros(4, 24, dtype=torch.bfloat16)
    assert _bulk_aligned((x, 24))  # rows of 48 bytes
    assert not _bulk_aligned((x, 24), (x[:, 1:], 24))  # starts 2 bytes in
    assert not _bulk_aligned((x.view(-1)[:20].view(2, 10), 10))  # rows of 20 bytes


def test_segment_length():
    assert _segment_length(1536, 1 << 20) == 32768  # batch 1, Di = 1536, 1M tokens: 32 segments
    assert _segment_length(1536, 4096) == 512  # short sequences: 512-token segments, 8 of them
    assert _segment_length(1536, 300) == 300  # shorter than one segment
    assert _segment_length(64 * 1536, 1 << 20) == 1 << 20  # a batch that fills the GPU: one segment


def test_grad_segment_length():
    """The backward's segments: 128 of them at batch 1, Di = 1536, 256K tokens; at least 4 chunks."""
    assert _grad_segment_length(1536, 1 << 18) == 2048
    assert _grad_segment_length(1536, 1024) == 4 * _CT  # short sequences: 4 chunks a segment
    assert _grad_segment_length(1536, 3 * _CT) == 3 * _CT  # shorter than one segment
    assert _grad_segment_length(256 * 1536, 1 << 18) == 1 << 18  # a batch that fills the GPU: one segment


def test_launcher_rejects_bad_shapes():
    u, delta, A, Bm, Cm, D, _ = make_inputs(1, 8, 16, 8)
    with pytest.raises(AssertionError, match="A"):
        selective_scan(u, delta, A[:8], Bm, Cm, D)
    with pytest.raises(AssertionError, match="h0"):
        selective_scan(u, delta, A, Bm, Cm, D, h0=torch.zeros(1, 8, 16, device=DEVICE))


# --- backward --------------------------------------------------------------------------------------

NAMES = ("u", "delta", "A", "B", "C", "D", "h0")


def outputs_and_grads(op, inputs, use_state=True, seed=5):
    """y, h_T and the gradients of sum(y * dy) (+ sum(h_T * dh) when `use_state`) with respect to
    every input that is not None, for fixed random dy, dh."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    y, h = op(*leaves)
    gen = torch.Generator().manual_seed(seed)
    loss = (y.float() * torch.randn(y.shape, generator=gen).to(y.device)).sum()
    if use_state:
        loss = loss + (h * torch.randn(h.shape, generator=gen).to(h.device)).sum()
    loss.backward()
    return y, h, {name: x.grad for name, x in zip(NAMES, leaves) if x is not None}


def check_grads(inputs, rtol, op=selective_scan, use_state=True):
    """The Triton op against the fp32 loop: outputs, final state and every gradient, each gradient
    in its input's dtype."""
    y, h, grads = outputs_and_grads(op, inputs, use_state)
    ref_y, ref_h, ref_grads = outputs_and_grads(selective_scan_ref, inputs, use_state)
    assert_close("y", ref_y, y, rtol)
    assert_close("state", ref_h, h, rtol)
    for name, ref in ref_grads.items():
        assert grads[name].dtype == ref.dtype
        assert_close(f"d{name}", ref, grads[name], rtol)


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("B,T,Di,N", [(1, 37, 32, 8), (2, 20, 16, 4)], ids=["B1-T37-D32-N8", "B2-T20-D16-N4"])
def test_gradients_match_reference(B, T, Di, N, with_h0):
    check_grads(make_inputs(B, T, Di, N, with_h0=with_h0, seed=6), 1e-5)


def test_gradients_through_segments():
    """Segments of 16 tokens in the forward and the backward (the public op takes one forward segment
    at this size): the gradient at each segment's end comes from the later segments through the
    reversed carry, and h0's from the first."""
    segmented = lambda *x: _SelectiveScan.apply(*x, 16, 16)  # noqa: E731
    check_grads(make_inputs(1, 37, 32, 8, with_h0=True, seed=7), 1e-5, op=segmented)


def test_gradients_summed_over_channel_blocks():
    """B2, three channel blocks of the backward's pass 6B; forward segments of four chunks, the
    backward's of two, the last one partial: dB, dC are the sums of the blocks' partial sums, and
    every segment starts from its own rows of states and gradients."""
    T, Di = 5 * _CT + 1, 3 * _GRAD_BD
    check_grads(make_inputs(2, T, Di, 4, with_h0=True, seed=12), 1e-5, op=lambda *x: _SelectiveScan.apply(*x, 4 * _CT, 2 * _CT))


def test_gradients_without_the_final_state():
    """Only y enters the loss: the final state's gradient reaches backward as None."""
    check_grads(make_inputs(1, 37, 16, 8, with_h0=True, seed=8), 1e-5, use_state=False)


def test_gradients_of_the_final_state_alone():
    """Only h_T enters the loss: y's gradient reaches backward as None (C, D then get zeros)."""
    inputs = make_inputs(1, 37, 16, 8, with_h0=True, seed=11)
    grads = {}
    for name, op in (("triton", selective_scan), ("ref", selective_scan_ref)):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        op(*leaves)[1].square().sum().backward()
        grads[name] = dict(zip(NAMES, (x.grad for x in leaves)))
    for name, ref in grads["ref"].items():
        if ref is None:
            assert not grads["triton"][name].any()
        else:
            assert_close(f"d{name}", ref, grads["triton"][name], 1e-5)


def test_bf16_gradients():
    """u, Delta, B, C in bf16: y and their gradients rounded to bf16; A, D, h0 stay fp32."""
    check_grads(make_inputs(1, 37, 16, 8, dtype=torch.bfloat16, with_h0=True, seed=9), 1e-2)


def test_autograd_saves_no_per_step_states():
    """What the op keeps for its backward is its inputs and one state per segment, not the
    T x Di x N states that autograd through the reference loop keeps (Mamba's memory at 16K)."""
    inputs = [x.requires_grad_() if x is not None else None for x in make_inputs(1, 37, 32, 8, with_h0=True)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _SelectiveScan.apply(*inputs, 16, 16)
    T, Di, N = 37, 32, 8
    input_elements = sum(x.numel() for x in inputs)
    assert sum(saved) <= input_elements + 3 * N * Di  # inputs + the states entering 3 segments
    assert max(saved) < T * Di * N


def test_no_grad_forward_keeps_nothing_for_backward():
    u, delta, A, Bm, Cm, D, _ = make_inputs(1, 8, 16, 8)
    with torch.no_grad():
        y, h = selective_scan(u.requires_grad_(), delta, A, Bm, Cm, D)
    assert y.grad_fn is None and h.grad_fn is None
    assert_close("y under no_grad", selective_scan_ref(u.detach(), delta, A, Bm, Cm, D)[0], y, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_gpu_gradients_match_reference(dtype, rtol):
    """B2-T2000-D256-N16: the public op splits time into 512-token segments (4 per sequence)."""
    check_grads(make_inputs(2, 2000, 256, 16, dtype=dtype, with_h0=True, seed=10), rtol)
