"""Triton chunked forward and backward of scalar-decay linear attention against its fp32 loop
reference (outputs, final states and, through torch.autograd, every gradient).

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set here when no CUDA GPU is
present) and on a GPU as it is. Chain of trust: the loop reference against the closed form
o_t = scale * (sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) q_t h0), then the Triton
kernels against the loop. Gradient tolerances: 1e-5 relative in fp32 (the interpreter's dots are
exact fp32); bf16 inputs round every dot operand to bf16, checked at 2e-2.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from altbench.kernels.chunk_scalar_decay import (  # noqa: E402
    _chunk_scalar_decay_fwd,
    _ChunkScalarDecay,
    _scan_states_kernel,
    chunk_scalar_decay,
    chunk_scalar_decay_ref,
)
from conftest import assert_close  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(B, T, H, K, V, heads_qk=None, dtype=torch.float32, decay_bias=2.0, with_h0=False, seed=0):
    """Random q, k, v; g = logsigmoid(N(decay_bias, 1)) <= 0; h0 or None."""
    gen = torch.Generator().manual_seed(seed)
    Hk = heads_qk or H
    q = torch.randn(B, T, Hk, K, generator=gen)  # (B, T, Hk, K)
    k = torch.randn(B, T, Hk, K, generator=gen)  # (B, T, Hk, K)
    v = torch.randn(B, T, H, V, generator=gen)  # (B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + decay_bias)  # (B, T, H)
    h0 = torch.randn(B, H, K, V, generator=gen) if with_h0 else None  # (B, H, K, V)
    to = lambda x: None if x is None else x.to(DEVICE)  # noqa: E731
    return to(q.to(dtype)), to(k.to(dtype)), to(v.to(dtype)), to(g), to(h0)


def test_reference_matches_closed_form():
    q, k, v, g, h0 = make_inputs(2, 20, 2, 8, 4, with_h0=True)
    o, S = chunk_scalar_decay_ref(q, k, v, g, h0, scale=0.5)
    G = g.cumsum(1)  # (B, T, H)
    t = torch.arange(20, device=g.device)
    causal = t[:, None] >= t[None, :]  # (T, T): t >= s
    gap = (G[:, :, None] - G[:, None, :]).masked_fill(~causal[None, :, :, None], -torch.inf)  # (B, t, s, H)
    scores = torch.einsum("bthk,bshk->btsh", q, k) * gap.exp()  # (B, t, s, H)
    expect = 0.5 * (torch.einsum("btsh,bshv->bthv", scores, v) + G.exp()[..., None] * torch.einsum("bthk,bhkv->bthv", q, h0))
    decay_to_end = (G[:, -1:] - G).exp()  # (B, T, H)
    expect_S = G[:, -1].exp()[..., None, None] * h0 + torch.einsum("bsh,bshk,bshv->bhkv", decay_to_end, k, v)
    assert_close("o", expect, o, 1e-5)
    assert_close("state", expect_S, S, 1e-5)


SHAPES = [  # B, T, H, K, V, heads of q and k
    (1, 64, 2, 16, 16, None),
    (2, 70, 2, 16, 32, None),
    (1, 80, 3, 32, 16, None),
    (1, 37, 4, 16, 16, 1),
]


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("B,T,H,K,V,Hk", SHAPES, ids=[f"B{s[0]}-T{s[1]}-H{s[2]}-K{s[3]}-V{s[4]}" + (f"-Hk{s[5]}" if s[5] else "") for s in SHAPES])
def test_triton_matches_reference(B, T, H, K, V, Hk, with_h0):
    q, k, v, g, h0 = make_inputs(B, T, H, K, V, heads_qk=Hk, with_h0=with_h0)
    o, S = chunk_scalar_decay(q, k, v, g, h0, chunk_size=16)
    ref_o, ref_S = chunk_scalar_decay_ref(q, k, v, g, h0)
    assert o.shape == (B, T, H, V) and S.shape == (B, H, K, V)
    assert_close("o", ref_o, o, 1e-5)
    assert_close("state", ref_S, S, 1e-5)


@pytest.mark.parametrize("segment_length", [32, 64], ids=["L32", "L64"])
def test_segments_of_several_chunks(segment_length):
    """Segments of 2 and 4 chunks (the public op picks 1 at these sizes): the state runs through
    chunks inside a segment, and T = 75 leaves a partial chunk in a partial last segment."""
    q, k, v, g, h0 = make_inputs(1, 75, 2, 16, 16, with_h0=True, seed=1)
    o, S, _ = _chunk_scalar_decay_fwd(q, k, v, g, h0, 0.3, 16, segment_length)
    ref_o, ref_S = chunk_scalar_decay_ref(q, k, v, g, h0, scale=0.3)
    assert_close("o", ref_o, o, 1e-5)
    assert_close("state", ref_S, S, 1e-5)


@pytest.mark.parametrize("n_segments", [16, 37], ids=["NS16", "NS37"])
def test_scan_over_many_segments(n_segments):
    """The scan kernel alone, over more segments than it takes in one step (16): each segment's
    own state is replaced by the state entering it, S_s = exp(d_{s-1}) S_{s-1} + own_{s-1}."""
    gen = torch.Generator().manual_seed(4)
    BH, K, V = 3, 16, 32
    own = torch.randn(BH, n_segments, K, V, generator=gen).to(DEVICE)  # (B*H, NS, K, V)
    log_decay = (-torch.rand(BH, n_segments, generator=gen) * 3).to(DEVICE)  # (B*H, NS)
    h0 = torch.randn(BH, K, V, generator=gen).to(DEVICE)
    states, ht = own.clone(), torch.empty_like(h0)
    _scan_states_kernel[(BH, K * V // 256)](states, log_decay, h0, ht, n_segments, K=K, V=V, E=256, U=16, HAS_H0=True)
    S, entering = h0, []
    for s in range(n_segments):
        entering.append(S)
        S = log_decay[:, s, None, None].exp() * S + own[:, s]
    assert_close("entering states", torch.stack(entering, 1), states, 1e-6)
    assert_close("final state", S, ht, 1e-6)


def test_bf16_inputs():
    q, k, v, g, h0 = make_inputs(2, 50, 2, 32, 16, dtype=torch.bfloat16, with_h0=True, seed=2)
    o, S = chunk_scalar_decay(q, k, v, g, h0, chunk_size=16)
    ref_o, ref_S = chunk_scalar_decay_ref(q, k, v, g, h0)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close("o", ref_o, o, 1e-2)
    assert_close("state", ref_S, S, 1e-2)


def test_strong_decay_stays_finite():
    """g near -30 per token: exp of the unmasked G_i - G_j (i < j) would overflow to inf and turn
    the masked scores into NaN; the state forgets all but the last token."""
    q, k, v, g, _ = make_inputs(1, 48, 2, 16, 16, decay_bias=-30.0, seed=3)
    o, S = chunk_scalar_decay(q, k, v, g, chunk_size=16)
    ref_o, ref_S = chunk_scalar_decay_ref(q, k, v, g)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert_close("o", ref_o, o, 1e-5)
    assert_close("state", ref_S, S, 1e-5)


def test_launcher_rejects_bad_shapes():
    q, k, v, g, _ = make_inputs(1, 32, 2, 16, 16)
    with pytest.raises(AssertionError, match="g"):
        chunk_scalar_decay(q, k, v, g[:, :, :1], chunk_size=16)
    with pytest.raises(AssertionError, match="h0"):
        chunk_scalar_decay(q, k, v, g, h0=torch.zeros(1, 2, 16, 8, device=DEVICE), chunk_size=16)


# --- backward --------------------------------------------------------------------------------------


def outputs_and_grads(op, inputs, use_state=True, seed=5, **kw):
    """o, S_T and the gradients of sum(o * do) (+ sum(S_T * dS) when `use_state`) with respect to
    every input that is not None, for fixed random do, dS."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    o, S = op(*leaves, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum()
    if use_state:
        loss = loss + (S * torch.randn(S.shape, generator=gen).to(S.device)).sum()
    loss.backward()
    return o, S, {name: x.grad for name, x in zip("q k v g h0".split(), leaves) if x is not None}


def check_grads(inputs, rtol, use_state=True, **kw):
    """The Triton op against the fp32 loop: outputs, final state and every gradient."""
    o, S, grads = outputs_and_grads(chunk_scalar_decay, inputs, use_state, **kw)
    ref_o, ref_S, ref_grads = outputs_and_grads(chunk_scalar_decay_ref, [None if x is None else x.float() for x in inputs], use_state,
                                                scale=kw.get("scale"))
    assert_close("o", ref_o, o, rtol)
    assert_close("state", ref_S, S, rtol)
    for name, ref in ref_grads.items():
        assert grads[name].dtype == inputs["q k v g h0".split().index(name)].dtype
        assert_close(f"d{name}", ref, grads[name], rtol)


GRAD_SHAPES = [  # B, T, H, K, V, heads of q and k
    (1, 40, 2, 16, 16, None),  # T not a multiple of the chunk (16)
    (2, 37, 4, 16, 16, 2),  # q, k shared by two heads each
    (1, 33, 2, 16, 80, None),  # V in two blocks (64 + 16): dq, dk summed over blocks
    (1, 20, 1, 80, 48, None),  # K > 64: K padded to a block of 128
]


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("B,T,H,K,V,Hk", GRAD_SHAPES, ids=[f"B{s[0]}-T{s[1]}-H{s[2]}-K{s[3]}-V{s[4]}" + (f"-Hk{s[5]}" if s[5] else "") for s in GRAD_SHAPES])
def test_gradients_match_reference(B, T, H, K, V, Hk, with_h0):
    check_grads(make_inputs(B, T, H, K, V, heads_qk=Hk, with_h0=with_h0, seed=6), 1e-5, chunk_size=16)


def test_gradients_through_segments_of_several_chunks():
    """Segments of 2 chunks (the public op picks 1 at this size): dS crosses chunks inside a
    segment and segments through the reversed scan; T = 75 ends in a partial chunk."""
    q, k, v, g, h0 = make_inputs(1, 75, 2, 16, 16, with_h0=True, seed=7)
    segmented = lambda *x, scale: _ChunkScalarDecay.apply(*x, scale, 16, 32)  # noqa: E731
    o, S, grads = outputs_and_grads(segmented, (q, k, v, g, h0), scale=0.3)
    ref_o, ref_S, ref_grads = outputs_and_grads(chunk_scalar_decay_ref, (q, k, v, g, h0), scale=0.3)
    assert_close("o", ref_o, o, 1e-5)
    assert_close("state", ref_S, S, 1e-5)
    for name, ref in ref_grads.items():
        assert_close(f"d{name}", ref, grads[name], 1e-5)


def test_gradients_without_the_final_state():
    """Only o enters the loss: the final state's gradient reaches backward as None."""
    check_grads(make_inputs(1, 40, 2, 16, 16, with_h0=True, seed=8), 1e-5, use_state=False, chunk_size=16, scale=0.5)


def test_gradients_of_the_final_state_alone():
    """Only S_T enters the loss: o's gradient reaches backward as None (q then gets zeros)."""
    inputs = make_inputs(1, 40, 2, 16, 16, with_h0=True, seed=12)
    grads = {}
    for name, op in (("triton", lambda *x: chunk_scalar_decay(*x, chunk_size=16)), ("ref", chunk_scalar_decay_ref)):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        op(*leaves)[1].square().sum().backward()
        grads[name] = [x.grad for x in leaves]
    assert not grads["triton"][0].any() and grads["ref"][0] is None
    for name, ref, out in zip("k v g h0".split(), grads["ref"][1:], grads["triton"][1:]):
        assert_close(f"d{name}", ref, out, 1e-5)


def test_gradients_with_strong_decay_stay_finite():
    q, k, v, g, h0 = make_inputs(1, 48, 2, 16, 16, decay_bias=-30.0, with_h0=True, seed=9)
    _, _, grads = outputs_and_grads(chunk_scalar_decay, (q, k, v, g, h0), chunk_size=16)
    assert all(torch.isfinite(x).all() for x in grads.values())
    check_grads((q, k, v, g, h0), 1e-5, chunk_size=16)


def test_bf16_gradients():
    check_grads(make_inputs(1, 50, 2, 32, 16, dtype=torch.bfloat16, with_h0=True, seed=10), 2e-2, chunk_size=16)


GPU_SHAPES = [(2, 1000, 4, 64, 64, None), (1, 1000, 8, 128, 64, 1)]  # K = V = 64; Mamba-2's shape, B and C shared


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T,H,K,V,Hk", GPU_SHAPES, ids=[f"B{s[0]}-T{s[1]}-H{s[2]}-K{s[3]}-V{s[4]}" + (f"-Hk{s[5]}" if s[5] else "") for s in GPU_SHAPES])
def test_gpu_gradients_match_reference(B, T, H, K, V, Hk, dtype, rtol):
    check_grads(make_inputs(B, T, H, K, V, heads_qk=Hk, dtype=dtype, decay_bias=4.0, with_h0=True, seed=11), rtol)
