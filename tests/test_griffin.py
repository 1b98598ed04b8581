"""Griffin and Hawk (models/griffin.py): the RG-LRU in three forms, local attention against its loop
and across the window boundary, a KV cache bounded by the window, parameter counts, and logits
against transformers' RecurrentGemma with every weight perturbed (Hawk = recurrent blocks only)."""

import math

import pytest
import torch

from altbench import registry
from altbench.models import griffin as g
from altbench.models import hf
from altbench.models.base import state_nbytes
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout


def rglru_inputs(B, T, W):
    gen = torch.Generator().manual_seed(0)
    x, gate_a, gate_x = (torch.randn(B, T, W, generator=gen) for _ in range(3))
    log_a = -0.3 * torch.rand(W, generator=gen)  # a in (0.74, 1)
    return x, gate_a, gate_x, log_a, torch.randn(B, W, generator=gen)


def step_loop(x, gate_a, gate_x, log_a, h):
    ys = []
    for t in range(x.shape[1]):
        y, h = g.rglru_step(x[:, t], gate_a[:, t], gate_x[:, t], log_a, h)
        ys.append(y)
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "start"])
@pytest.mark.parametrize("B,T,W", [(2, 33, 16), (1, 1, 8), (3, 64, 32)], ids=["B2-T33-W16", "B1-T1-W8", "B3-T64-W32"])
def test_rglru_forms_agree(B, T, W, with_h0):
    x, gate_a, gate_x, log_a, h0 = rglru_inputs(B, T, W)
    h0 = h0 if with_h0 else None
    y_ref, h_ref = g.rglru_ref(x, gate_a, gate_x, log_a, h0)
    y_scan, h_scan = g.rglru_scan(x, gate_a, gate_x, log_a, h0)
    y_step, h_step = step_loop(x, gate_a, gate_x, log_a, h0)
    assert_close("scan y", y_ref, y_scan, RTOL)
    assert_close("scan h_T", h_ref, h_scan, RTOL)
    assert_close("step y", y_ref, y_step, RTOL)
    assert_close("step h_T", h_ref, h_step, RTOL)


@pytest.mark.parametrize("form", ["ref", "scan", "step"])
def test_rglru_equations_by_hand(form):
    """a = 0.9, zero gate pre-activations (r = i = 1/2), x = 2: a_t = 0.9^(8/2) = 0.6561, i x = 1."""
    run = {"ref": g.rglru_ref, "scan": g.rglru_scan, "step": step_loop}[form]
    x, zeros, log_a = torch.full((1, 2, 1), 2.0), torch.zeros(1, 2, 1), torch.tensor([math.log(0.9)])
    a, norm = 0.6561, math.sqrt(1 - 0.6561**2)
    # a sequence start resets: h_0 = i_0 x_0, without the sqrt(1 - a^2) normalisation
    y, _ = run(x, zeros, zeros, log_a, None)
    assert_close(f"{form} from start", torch.tensor([[[1.0], [a + norm]]]), y, 1e-6)
    # continuing from h_{-1} = 1 is eq. 4 at every step
    y, h = run(x, zeros, zeros, log_a, torch.ones(1, 1))
    expected = torch.tensor([[[a + norm], [a * (a + norm) + norm]]])
    assert_close(f"{form} from h0", expected, y, 1e-6)
    assert_close(f"{form} h_T", expected[:, -1], h, 1e-6)


# T queries after P cached keys: single tokens, the first block only, several blocks, GQA, P > window
ATTENTION_CASES = [
    (1, 0, 8, 1), (1, 7, 8, 1), (5, 3, 8, 1), (8, 0, 8, 1), (21, 0, 8, 1), (21, 7, 8, 2), (17, 2, 4, 1), (3, 20, 4, 1)
]


@pytest.mark.parametrize("form", [g.rglru_ref, g.rglru_scan], ids=["ref", "scan"])
def test_gradients_stay_finite_where_the_recurrence_gate_closes(form):
    """r_t = sigmoid(-30) makes a_t = 1 in fp32 and 1 - a_t^2 = 0: a plain sqrt gives NaN gradients
    there (Griffin and Hawk diverged on MQAR on an H100); elsewhere the capped sqrt is the plain one."""
    x, gate_a, gate_x, log_a, h0 = rglru_inputs(1, 6, 4)
    gate_a[:, 2:4] = -30.0
    leaves = [t.requires_grad_() for t in (x, gate_a, gate_x, log_a)]
    form(*leaves, h0)[0].sum().backward()
    assert all(t.grad.isfinite().all() for t in leaves)
    u = torch.tensor([0.0, 1e-8, 0.25, 1.0], requires_grad=True)
    g._SqrtCappedGrad.apply(u).sum().backward()
    torch.testing.assert_close(u.grad, torch.tensor([g.MAX_SQRT_GRAD, g.MAX_SQRT_GRAD, 1.0, 0.5]))


@pytest.mark.parametrize("T,P,W,Hkv", ATTENTION_CASES, ids=[f"T{t}-P{p}-W{w}-Hkv{h}" for t, p, w, h in ATTENTION_CASES])
def test_local_attention_matches_loop(T, P, W, Hkv):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, T, 4, 16, generator=gen)
    k, v = (torch.randn(2, P + T, Hkv, 16, generator=gen) for _ in range(2))
    assert_close(f"T{T}-P{P}-W{W}", g.local_attention_ref(q, k, v, W), g.local_attention(q, k, v, W), RTOL)


def tiny(arch, **overrides):
    torch.manual_seed(0)
    return registry.build(arch, "tiny", dtype=torch.float32, **overrides).eval()


def ids(T, B=2):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(1))


def test_segments_and_steps_across_the_window_boundary():
    model, W = tiny("griffin"), 8
    x = ids(3 * W + 5)
    with torch.no_grad():
        full, _ = model(x)
        state, parts = None, []
        for segment in x.split([W - 1, 1, 1, W + 1, W + 3], dim=1):  # boundaries at W-1, W, W+1, 2W+2
            logits, state = model(segment, state)
            parts.append(logits)
        _, state = model(x[:, : W - 1])
        steps = []
        for t in range(W - 1, x.shape[1]):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
        wider, _ = tiny("griffin", attention_window=W + 1)(x)
    assert_close("segmented", full, torch.cat(parts, 1), RTOL)
    assert_close("prefill W-1, then step", full[:, W - 1 :], torch.stack(steps, 1), RTOL)
    # the window is what these logits depend on: one more key changes them past position W
    assert torch.allclose(full[:, :W], wider[:, :W], rtol=RTOL, atol=1e-5)
    assert ((full[:, W:] - wider[:, W:]).norm() / full[:, W:].norm()).item() > 1e-3


def test_kv_cache_is_bounded_by_the_window():
    model, W = tiny("griffin"), 8
    sizes = {}
    with torch.no_grad():
        for T in (3, W - 1, W, 3 * W):
            _, state = model(ids(T))
            sizes[T] = state_nbytes(state)
            assert model.state_bytes(2, T, torch.float32) == sizes[T]
            keys = state[2][0]  # layer 2 is the attention block
            assert keys.shape == (2, min(T, W - 1), 1, model.layers[2].mixer.head_dim)
    assert sizes[3] < sizes[W - 1] == sizes[W] == sizes[3 * W]
    assert model.state_bytes(2, 10**6, torch.bfloat16) == model.state_bytes(2, W - 1, torch.bfloat16)


def test_layer_pattern():
    griffin = registry.build("griffin", "tiny", device="meta", n_layers=7)
    kinds = [type(layer.mixer).__name__[0] for layer in griffin.layers]
    assert "".join(kinds) == "RRLRRLR"  # recurrent, recurrent, local attention, ...
    hawk = registry.build("hawk", "tiny", device="meta")
    assert all(isinstance(layer.mixer, g.RecurrentBlock) for layer in hawk.layers)
    with pytest.raises(ValueError, match="unknown block types"):
        g.GriffinConfig(block_types=("recurrent", "global"))


def perturbed_pair(transformers, arch):
    """transformers' RecurrentGemma and ours on the same weights, every weight moved off its init
    (transformers zero-initialises norms and biases, which would hide a mis-mapped one)."""
    torch.manual_seed(0)
    config = registry.config(arch, "tiny")
    theirs = transformers.RecurrentGemmaForCausalLM(g.to_hf_config(config)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = g.Griffin(config).eval()
    hf.load_state_dict_into(ours, hf.from_hf("griffin", theirs.state_dict()), "test")
    return ours, theirs


@pytest.mark.parametrize("arch", ["griffin", "hawk"])
def test_logits_match_recurrent_gemma_with_all_weights_perturbed(arch):
    ours, theirs = perturbed_pair(pytest.importorskip("transformers"), arch)
    x = ids(33)
    with torch.no_grad():
        expected = theirs(x, use_cache=False).logits  # transformers' cache needs an attention layer
        got, _ = ours(x)
    assert_close(arch, expected, got, RTOL)
    assert ours.params() == sum(p.numel() for p in theirs.parameters())


def test_hf_config_roundtrip():
    pytest.importorskip("transformers")
    for size in ("tiny", "recurrentgemma-2b"):
        c = registry.config("griffin", size)
        assert g.from_hf_config(g.to_hf_config(c).to_dict()) == c
    with pytest.raises(ValueError, match="lru_blocks == n_heads"):
        g.to_hf_config(registry.config("griffin", "100m"))  # the paper's 16 gate blocks, 6 heads


def test_recurrentgemma_2b_param_count():
    """Botev et al. 2024 (arXiv:2404.07839): "2B non-embedding parameters" (abstract) and 2.7B in all
    (Table 1); the analytic count must also equal transformers' model built on the meta device."""
    transformers = pytest.importorskip("transformers")
    c = registry.config("griffin", "recurrentgemma-2b")
    total = registry.param_count("griffin", "recurrentgemma-2b")
    assert abs(total - c.vocab_size * c.d_model - 2.0e9) / 2.0e9 < 0.02
    assert abs(total - 2.7e9) / 2.7e9 < 0.02
    with torch.device("meta"):
        theirs = transformers.RecurrentGemmaForCausalLM(g.to_hf_config(c))
    assert total == sum(p.numel() for p in theirs.parameters())
