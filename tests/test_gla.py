"""GLA (models/gla.py): the chunked and step forms agree with the loop over time in fp32 (outputs,
final states and gradients, from an initial state, T not a multiple of the chunk), the chunked form
stays exact under decays that overflow a one-level factorisation, the gate is the paper's
sigmoid(low rank)^(1/16), the state is the fp32 matrix memory alone, and the named sizes have the
paper's parameter counts and widths."""

import pytest
import torch
import torch.nn.functional as F

from altbench import registry
from altbench.models.gla import GatedLinearAttention, gla_chunked, gla_ref, gla_step
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout


def gla_steps(q, k, v, log_alpha, state):
    """`gla_step` over every token, with the forms' signature."""
    outputs = []
    for t in range(q.shape[1]):
        o, state = gla_step(q[:, t], k[:, t], v[:, t], log_alpha[:, t], state)
        outputs.append(o)
    return torch.stack(outputs, dim=1), state


FORMS = {
    "chunked-C16-c4": lambda *a: gla_chunked(*a, chunk_size=16, sub_chunk_size=4),
    "chunked-C16-c16": lambda *a: gla_chunked(*a, chunk_size=16, sub_chunk_size=16),  # diagonal only
    "chunked-C8-c1": lambda *a: gla_chunked(*a, chunk_size=8, sub_chunk_size=1),  # off-diagonal only
    "chunked-C64-c16": lambda *a: gla_chunked(*a, chunk_size=64, sub_chunk_size=16),  # one chunk, longer than T
    "step": gla_steps,
}
SHAPES = [(2, 37, 4, 8, 16), (1, 20, 2, 4, 4)]  # B, T, H, K, V


def shape_id(s):
    return "B{}-T{}-H{}-K{}-V{}".format(*s)


def inputs(B, T, H, K, V):
    """q, k, v, log alpha (alpha spread over (0, 1), so decays matter inside a chunk), initial state."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    log_alpha = F.logsigmoid(2 * torch.randn(B, T, H, K, generator=g))
    state = torch.randn(B, H, K, V, generator=g)
    return [x.requires_grad_() for x in (q, k, v, log_alpha, state)]


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("form", FORMS)
def test_form_equals_the_loop(form, shape):
    q, k, v, log_alpha, state = inputs(*shape)
    o_ref, S_ref = gla_ref(q, k, v, log_alpha, state)
    o, S = FORMS[form](q, k, v, log_alpha, state)
    assert_close(f"{form} output", o_ref, o, RTOL)
    assert_close(f"{form} final state", S_ref, S, RTOL)

    g = torch.Generator().manual_seed(1)
    w_o, w_S = torch.randn(o.shape, generator=g), torch.randn(S.shape, generator=g)
    leaves = (q, k, v, log_alpha, state)
    grads_ref = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_S).sum(), leaves)
    grads = torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), leaves)
    for name, ref, out in zip(["dq", "dk", "dv", "dlog_alpha", "dstate"], grads_ref, grads):
        assert_close(f"{form} {name}", ref, out, RTOL)


def test_chunked_equals_the_loop_from_the_zero_state():
    q, k, v, log_alpha, _ = inputs(*SHAPES[0])
    o_ref, S_ref = gla_ref(q, k, v, log_alpha)
    o, S = FORMS["chunked-C16-c4"](q, k, v, log_alpha, None)
    assert_close("output", o_ref, o, RTOL)
    assert_close("final state", S_ref, S, RTOL)


def test_chunked_is_exact_under_strong_decay():
    B, T, H, K, V = 1, 64, 2, 8, 8
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, V, generator=g)
    log_alpha = -10 * torch.rand(B, T, H, K, generator=g)  # alpha down to 4.5e-5 per step
    # the decay over the chunk underflows fp32, so k_j / (decay up to j) would overflow in one level
    assert torch.isinf(torch.exp(-log_alpha.cumsum(1))).any()
    o_ref, S_ref = gla_ref(q, k, v, log_alpha)
    o, S = gla_chunked(q, k, v, log_alpha, None, chunk_size=64, sub_chunk_size=16)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert_close("output", o_ref, o, RTOL)
    assert_close("final state", S_ref, S, RTOL)


def test_gate_is_sigmoid_of_a_low_rank_map_to_the_one_sixteenth():
    torch.manual_seed(0)
    mixer = GatedLinearAttention(registry.config("gla", "tiny"))
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    weights = mixer.state_dict()  # W_a1 is a piece of the fused projection of x, named as its own Linear
    a1, a2 = weights["gate_down.weight"], weights["gate_up.weight"]  # (16, d), (d_k, 16)
    expected = torch.sigmoid(x @ a1.T @ a2.T + mixer.gate_up.bias) ** (1 / 16)  # (2, 5, d_k)
    assert a1.shape == (16, 64) and a2.shape == (32, 16)
    assert_close("alpha", expected.view(2, 5, 4, 8), mixer._qkv_alpha(x)[3].exp(), 1e-6)


def test_state_is_the_fp32_matrix_memory_only():
    torch.manual_seed(0)
    model = registry.build("gla", "tiny", dtype=torch.bfloat16).eval()
    x = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, state = model(x)
        _, stepped = model.step(x[:, 0], model.init_state(3))
    assert logits.dtype == torch.bfloat16
    for s in [*state, *stepped]:
        assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.shape == (3, 4, 8, 16)


PAPER_PARAMS = [("340m", 340e6), ("1.3b", 1.3e9)]  # Yang et al. 2023, sec. 5


@pytest.mark.parametrize("size, paper", PAPER_PARAMS, ids=[p[0] for p in PAPER_PARAMS])
def test_param_count_and_widths_match_the_paper(size, paper):
    model = registry.build("gla", size, device="meta")
    assert model.params() == sum(p.numel() for p in model.parameters())
    assert abs(model.params() / paper - 1) < 0.02, f"{size}: {model.params() / 1e6:.1f}M"
    d, mixer = model.config.d_model, model.layers[0].mixer
    assert mixer.n_heads == 4
    weights = mixer.state_dict()
    assert weights["q_proj.weight"].shape == weights["k_proj.weight"].shape == (d // 2, d)  # key width d/2
    assert weights["v_proj.weight"].shape == weights["g_proj.weight"].shape == (d, d)  # value width d
