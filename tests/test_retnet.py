"""RetNet (models/retnet.py): the parallel, chunkwise and step forms of retention agree with the
loop over time in fp32 (outputs, final states and gradients, from an initial state, T not a
multiple of the chunk); the loop decays as gamma_h^t; the model gives the same logits through either
forward form; the named sizes have the paper's parameter counts."""

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models.retnet import (
    retention_chunkwise,
    retention_gammas,
    retention_parallel,
    retention_ref,
    retention_step,
)
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout


def retention_steps(q, k, v, gamma, state):
    """`retention_step` over every token, with the forms' signature."""
    outputs = []
    for t in range(q.shape[1]):
        o, state = retention_step(q[:, t], k[:, t], v[:, t], gamma, state)
        outputs.append(o)
    return torch.stack(outputs, dim=1), state


FORMS = {
    "parallel": retention_parallel,
    "chunkwise-C8": lambda *a: retention_chunkwise(*a, chunk_size=8),
    "chunkwise-C1": lambda *a: retention_chunkwise(*a, chunk_size=1),
    "chunkwise-C64": lambda *a: retention_chunkwise(*a, chunk_size=64),  # one chunk, longer than T
    "step": retention_steps,
}
SHAPES = [(2, 37, 4, 8, 16), (1, 20, 2, 4, 4)]  # B, T, H, K, V


def shape_id(s):
    return "B{}-T{}-H{}-K{}-V{}".format(*s)


def inputs(B, T, H, K, V):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v, state = torch.randn(B, T, H, V, generator=g), torch.randn(B, H, K, V, generator=g)
    return [x.requires_grad_() for x in (q, k, v, state)]


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("form", FORMS)
def test_form_equals_the_loop(form, shape):
    q, k, v, state = inputs(*shape)
    gamma = retention_gammas(shape[2])
    o_ref, S_ref = retention_ref(q, k, v, gamma, state)
    o, S = FORMS[form](q, k, v, gamma, state)
    assert_close(f"{form} output", o_ref, o, RTOL)
    assert_close(f"{form} final state", S_ref, S, RTOL)

    g = torch.Generator().manual_seed(1)
    w_o, w_S = torch.randn(o.shape, generator=g), torch.randn(S.shape, generator=g)
    grads_ref = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_S).sum(), (q, k, v, state))
    grads = torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), (q, k, v, state))
    for name, ref, out in zip(["dq", "dk", "dv", "dstate"], grads_ref, grads):
        assert_close(f"{form} {name}", ref, out, RTOL)


@pytest.mark.parametrize("form", ["parallel", "chunkwise-C8"])
def test_form_equals_the_loop_from_the_zero_state(form):
    q, k, v, _ = inputs(*SHAPES[0])
    gamma = retention_gammas(SHAPES[0][2])
    o_ref, S_ref = retention_ref(q, k, v, gamma)
    o, S = FORMS[form](q, k, v, gamma, None)
    assert_close(f"{form} output", o_ref, o, RTOL)
    assert_close(f"{form} final state", S_ref, S, RTOL)


def test_decay_per_head_is_the_papers():
    gamma = retention_gammas(4)
    assert gamma.tolist() == [31 / 32, 63 / 64, 127 / 128, 255 / 256]
    # one write at t = 0 read back at t by q = k: gamma_h^t (the mask D of eq. 5, row by row)
    T, H = 9, 4
    q, k, v = torch.zeros(1, T, H, 2), torch.zeros(1, T, H, 2), torch.zeros(1, T, H, 1)
    q[..., 0], k[0, 0, :, 0], v[0, 0] = 1.0, 1.0, 1.0
    o, _ = retention_ref(q, k, v, gamma)
    expected = gamma[None, :] ** torch.arange(T, dtype=torch.float32)[:, None]  # (T, H)
    assert_close("impulse response", expected, o[0, :, :, 0], 1e-6)


def test_model_parallel_and_chunkwise_forwards_agree():
    x = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(2))
    logits = {}
    for form in ["chunkwise", "parallel"]:
        torch.manual_seed(0)
        model = registry.build("retnet", "tiny", retention_form=form).eval()
        with torch.no_grad():
            first, state = model(x[:, :20])
            rest, _ = model(x[:, 20:], state)
        logits[form] = torch.cat([first, rest], dim=1)
    assert_close("parallel vs chunkwise logits", logits["chunkwise"], logits["parallel"], RTOL)


def test_unknown_retention_form_is_a_user_error():
    with pytest.raises(UserError, match="unknown retention_form 'recurrent'"):
        registry.build("retnet", "tiny", retention_form="recurrent")


# Sun et al. 2023, Table 2 names the sizes by parameter count. "2.7B" is GPT-3's 2.7B shape
# (d 2560, 32 layers), which holds 2.65B weights with a 50k vocabulary, as GPT-3's own does: 2.0% under.
PAPER_PARAMS = [("1.3b", 1.3e9, 0.02), ("2.7b", 2.7e9, 0.021), ("6.7b", 6.7e9, 0.02)]


@pytest.mark.parametrize("size, paper, tolerance", PAPER_PARAMS, ids=[p[0] for p in PAPER_PARAMS])
def test_param_count_matches_the_paper(size, paper, tolerance):
    model = registry.build("retnet", size, device="meta")
    assert model.params() == sum(p.numel() for p in model.parameters())
    assert abs(model.params() / paper - 1) < tolerance, f"{size}: {model.params() / 1e9:.3f}B"
    c, mixer = model.config, model.layers[0].mixer
    assert mixer.key_dim == 256  # d / heads in all three sizes
    weights = mixer.state_dict()
    assert weights["v_proj.weight"].shape == weights["g_proj.weight"].shape == (2 * c.d_model, c.d_model)
    assert model.layers[0].mlp.fc1.weight.shape == (2 * c.d_model, c.d_model)


def test_130m_is_matched_to_the_transformer_130m():
    ours, theirs = registry.param_count("retnet", "130m"), registry.param_count("transformer", "130m")
    assert abs(ours / theirs - 1) < 0.001, (ours, theirs)
