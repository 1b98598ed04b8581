"""xLSTM (altbench/models/xlstm.py): the three mLSTM forms agree (outputs, final states, gradients,
from an initial state, at T not a multiple of the chunk), the stabilised cells equal the paper's
unstabilised equations, the sLSTM cell and blocks keep the state contract, parameter counts match the
published ones, and logits, recurrent states and decode steps match transformers' xLSTMForCausalLM on
fully random weights (its own init zeroes the gate weights, which would leave the gates untested)."""

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models import hf, xlstm
from altbench.models.base import state_nbytes
from altbench.models.xlstm import (
    PUBLISHED_PARAMS, SIZES, from_hf_config, mlstm_chunked, mlstm_ref, mlstm_step, slstm_ref, slstm_step,
    to_hf_config,
)
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout


def mlstm_inputs(B, T, H, K, V, gate_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    i, f = (gate_scale * torch.randn(B, T, H, generator=g) for _ in range(2))
    return q, k, v, i, f


def prefix_state(B, H, K, V):
    """A realistic state (m far from 0) from a 9-token prefix, for continuing sequences."""
    return mlstm_ref(*mlstm_inputs(B, 9, H, K, V, seed=7))[1]


MLSTM_CASES = {  # (B, T, H, K, V, chunk, gate scale)
    "B2-T37-H3-K8-V6-L16": (2, 37, 3, 8, 6, 16, 3.0),
    "B1-T32-H2-K16-V16-L8": (1, 32, 2, 16, 16, 8, 3.0),
    "B2-T5-H2-K4-V8-L16": (2, 5, 2, 4, 8, 16, 3.0),  # shorter than one chunk
    "B1-T23-H2-K8-V8-L4-huge-gates": (1, 23, 2, 8, 8, 4, 40.0),  # exp(i~) overflows fp32 unstabilised
    "B1-T539-H2-K4-V4-L4-three-groups": (1, 539, 2, 4, 4, 4, 3.0),  # 135 chunks: groups of 64, 64 and 7
}


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("case", MLSTM_CASES.values(), ids=MLSTM_CASES.keys())
def test_mlstm_chunked_and_step_equal_ref(case, with_state):
    B, T, H, K, V, L, scale = case
    inputs = mlstm_inputs(B, T, H, K, V, scale)
    s0 = prefix_state(B, H, K, V) if with_state else None
    h_ref, st_ref = mlstm_ref(*inputs, s0)
    assert torch.isfinite(h_ref).all()
    h, st = mlstm_chunked(*inputs, s0, chunk_size=L)
    assert_close("chunked h", h_ref, h, RTOL)
    for name, a, b in zip("Cnm", st_ref, st):
        assert_close(f"chunked {name}", a, b, RTOL)
    zero = (torch.zeros(B, H, K, V), torch.zeros(B, H, K), torch.zeros(B, H))
    state, hs = s0 if with_state else zero, []
    for t in range(T):
        h_t, state = mlstm_step(*(x[:, t] for x in inputs), state)
        hs.append(h_t)
    assert_close("step h", h_ref, torch.stack(hs, 1), RTOL)
    for name, a, b in zip("Cnm", st_ref, state):
        assert_close(f"step {name}", a, b, RTOL)


def test_mlstm_chunked_gradients_equal_ref():
    inputs = [x.requires_grad_() for x in mlstm_inputs(2, 19, 2, 8, 8)]
    w = torch.randn(2, 19, 2, 8, generator=torch.Generator().manual_seed(5))
    (mlstm_ref(*inputs)[0] * w).sum().backward()
    ref = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    (mlstm_chunked(*inputs, chunk_size=8)[0] * w).sum().backward()
    for name, a, x in zip(["q", "k", "v", "i", "f"], ref, inputs):
        assert_close(f"d{name}", a, x.grad, 1e-4)


def test_mlstm_ref_equals_unstabilised_paper_equations():
    """With m_0 = 0 and eps = 0 the stabilised recurrence is exactly h = C^T q / max(|n^T q|, 1)."""
    q, k, v, i, f = (x.double() for x in mlstm_inputs(2, 17, 2, 8, 4))
    h_ref, (C_ref, _, m) = mlstm_ref(q, k, v, i, f, eps=0.0)
    C, n, hs = torch.zeros(2, 2, 8, 4, dtype=torch.float64), torch.zeros(2, 2, 8, dtype=torch.float64), []
    for t in range(17):
        f_t, i_t = torch.sigmoid(f[:, t])[..., None], torch.exp(i[:, t])[..., None]
        C = f_t[..., None] * C + i_t[..., None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = f_t * n + i_t * k[:, t]
        qs = q[:, t] / 8**0.5
        hs.append(torch.einsum("bhk,bhkv->bhv", qs, C) / (qs * n).sum(-1).abs().clamp_min(1.0)[..., None])
    assert_close("h", torch.stack(hs, 1), h_ref, 1e-6)  # the ref computes in fp32
    assert_close("C", C, C_ref * torch.exp(m)[..., None, None], 1e-6)


# --- sLSTM ----------------------------------------------------------------------------------------


def slstm_inputs(B=2, T=13, H=2, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 4, H, D, generator=g) * 2, torch.randn(4, H, D, D, generator=g) * 0.5


def test_slstm_step_and_split_equal_ref():
    pre, R = slstm_inputs()
    h_ref, st_ref = slstm_ref(pre, R)
    state, hs = tuple(torch.zeros(2, 2, 4) for _ in "cnmh"), []
    for t in range(pre.shape[1]):
        h, state = slstm_step(pre[:, t], R, state)
        hs.append(h)
    assert_close("step h", h_ref, torch.stack(hs, 1), RTOL)
    _, mid = slstm_ref(pre[:, :6], R)
    h2, st2 = slstm_ref(pre[:, 6:], R, mid)
    assert_close("continued h", h_ref[:, 6:], h2, RTOL)
    for name, a, b, c in zip("cnmh", st_ref, state, st2):
        assert_close(f"step {name}", a, b, RTOL)
        assert_close(f"continued {name}", a, c, RTOL)


def test_slstm_ref_equals_unstabilised_paper_equations():
    pre, R = (x.double() for x in slstm_inputs())
    h_ref, _ = slstm_ref(pre, R)
    c = n = h = torch.zeros(2, 2, 4, dtype=torch.float64)
    hs = []
    for t in range(pre.shape[1]):
        z, i, f, o = (pre[:, t] + torch.einsum("bhd,ghde->bghe", h, R)).unbind(1)
        c = torch.sigmoid(f) * c + torch.exp(i) * torch.tanh(z)
        n = torch.sigmoid(f) * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        hs.append(h)
    assert_close("h", torch.stack(hs, 1), h_ref, 1e-6)  # the ref computes in fp32


def tiny_with_slstm():
    torch.manual_seed(0)
    return registry.build("xlstm", "tiny", dtype=torch.float32, slstm_at=(1,)).eval()


def test_slstm_blocks_keep_the_model_contract():
    model = tiny_with_slstm()
    assert isinstance(model.layers[1].mixer, xlstm.SLSTMLayer) and isinstance(model.layers[0].mixer, xlstm.MLSTMLayer)
    x = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, state = model(x)
        parts, seg = [], None
        for chunk in x.split([8, 1, 12], dim=1):
            logits, seg = model(chunk, seg)
            parts.append(logits)
        steps, st = [], model.init_state(2)
        for t in range(21):
            logits, st = model.step(x[:, t], st)
            steps.append(logits)
    assert_close("segmented", full, torch.cat(parts, 1), RTOL)
    assert_close("step", full, torch.stack(steps, 1), RTOL)
    assert model.params() == sum(p.numel() for p in model.parameters())
    assert model.state_bytes(2, 21, torch.float32) == state_nbytes(state)
    with pytest.raises(UserError, match="sLSTM"):
        to_hf_config(model.config)


# --- sizes and the Hugging Face mapping -----------------------------------------------------------


@pytest.mark.parametrize("size", PUBLISHED_PARAMS)
def test_param_count_matches_published(size):
    n = registry.param_count("xlstm", size)
    assert abs(n / PUBLISHED_PARAMS[size] - 1) < 0.02, f"{size}: {n:,} vs published {PUBLISHED_PARAMS[size]:,}"


def test_hf_config_defaults_are_xlstm_7b():
    transformers = pytest.importorskip("transformers")
    assert from_hf_config(transformers.xLSTMConfig().to_dict()) == SIZES["7b"]
    assert from_hf_config({"vocab_size": 256, "embedding_dim": 128, "num_blocks": 2}).d_model == 128
    with pytest.raises(UserError, match="weight_mode"):
        from_hf_config({"vocab_size": 256, "hidden_size": 128, "num_hidden_layers": 2, "weight_mode": "fused"})


def test_random_weights_logits_states_and_steps_match_transformers():
    """T = 21 with chunks of 8: transformers runs its chunkwise kernel on 16 tokens, its recurrent one on 5."""
    transformers = pytest.importorskip("transformers")
    T = 21
    config = registry.config("xlstm", "tiny", chunk_size=8)
    torch.manual_seed(0)
    theirs = transformers.xLSTMForCausalLM(to_hf_config(config)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            else:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    ours = xlstm.XLSTM(config).eval()
    hf.load_state_dict_into(ours, hf.from_hf("xlstm", theirs.state_dict()), "test")
    x = torch.randint(0, 256, (2, T + 3), generator=g)
    with torch.no_grad():
        out = theirs(x[:, :T], use_cache=True)
        logits, state = ours(x[:, :T])
        assert_close("logits", out.logits, logits, RTOL)
        for layer, (theirs_state, our_state) in enumerate(zip(out.cache_params.rnn_state.values(), state)):
            for name, a, b in zip("Cnm", theirs_state, our_state):
                assert_close(f"layer {layer} {name}", a.reshape(b.shape), b, RTOL)
        cache = out.cache_params
        for t in range(T, T + 3):
            out = theirs(x[:, t : t + 1], cache_params=cache, use_cache=True)
            logits, state = ours.step(x[:, t], state)
            assert_close(f"step {t}", out.logits[:, 0], logits, RTOL)
            cache = out.cache_params
