"""Triton chunked forward of scalar-decay linear attention against its fp32 loop reference.

Runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set here when no CUDA GPU is
present) and on a GPU as it is. Chain of trust: the loop reference against the closed form
o_t = scale * (sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) q_t h0), then the Triton
kernels against the loop.
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
    o, S = _chunk_scalar_decay_fwd(q, k, v, g, h0, 0.3, 16, segment_length)
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
