"""RWKV-7: the wkv recurrence in three forms, parameter counts, and the fla mapping.

Chain of trust: `rwkv7_ref` (the paper's loop) -> `rwkv7_step` -> `rwkv7_chunked`, on outputs, final
states and gradients, from a random initial state, with T not a multiple of the chunk.
"""

import pytest
import torch
import torch.nn.functional as F

from altbench import registry
from altbench.models import hf
from altbench.models.rwkv7 import (
    LOG_DECAY_SCALE, from_fla_state_dict, rwkv7_chunked, rwkv7_ref, rwkv7_step, to_fla_config,
)
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout; observed errors are ~3e-7


def wkv_inputs(B, T, H, K, V, decay, seed=0):
    """RWKV-7-shaped inputs: a = -kappa, b = kappa * iclr with |kappa| = 1, log w in [-decay, 0)."""
    g = torch.Generator().manual_seed(seed)
    r, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    log_w = -decay * torch.rand(B, T, H, K, generator=g)
    kappa = F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    iclr = torch.rand(B, T, H, K, generator=g)
    state = torch.randn(B, H, V, K, generator=g)
    return (r, log_w, k, v, -kappa, kappa * iclr), state


CASES = {  # id -> (B, T, H, K, V, chunk, max |log w|)
    "B2-T37-H3-K8-C8": (2, 37, 3, 8, 8, 8, LOG_DECAY_SCALE),
    "B1-T50-H2-K16-C16": (1, 50, 2, 16, 16, 16, LOG_DECAY_SCALE),
    "B2-T21-H2-K8-V6-C5": (2, 21, 2, 8, 6, 5, LOG_DECAY_SCALE),
    "B1-T29-H2-K8-C16-strong-decay": (1, 29, 2, 8, 8, 16, 10.0),  # overflows without the mid split
    "B2-T7-H1-K4-C1": (2, 7, 1, 4, 4, 1, LOG_DECAY_SCALE),
    "B1-T9-H2-K8-C64-one-chunk": (1, 9, 2, 8, 8, 64, LOG_DECAY_SCALE),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_step_and_chunked_equal_ref(case):
    B, T, H, K, V, C, decay = case
    x, s0 = wkv_inputs(B, T, H, K, V, decay)
    o_ref, s_ref = rwkv7_ref(*x, s0)
    o_chunk, s_chunk = rwkv7_chunked(*x, s0, chunk_size=C)
    s, outs = s0, []
    for t in range(T):
        o, s = rwkv7_step(*(y[:, t] for y in x), s)
        outs.append(o)
    assert_close("step o", o_ref, torch.stack(outs, 1), RTOL)
    assert_close("step state", s_ref, s, RTOL)
    assert_close("chunked o", o_ref, o_chunk, RTOL)
    assert_close("chunked state", s_ref, s_chunk, RTOL)


def test_chunked_gradients_equal_ref():
    x, s0 = wkv_inputs(2, 19, 2, 8, 8, LOG_DECAY_SCALE, seed=1)
    g = torch.Generator().manual_seed(2)
    w_o, w_s = torch.randn(2, 19, 2, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g)

    def grads(fn, **kw):
        leaves = [t.clone().requires_grad_() for t in (*x, s0)]
        o, s = fn(*leaves, **kw)
        ((o * w_o).sum() + (s * w_s).sum()).backward()
        return [t.grad for t in leaves]

    names = ["r", "log_w", "k", "v", "a", "b", "state"]
    for name, ref, got in zip(names, grads(rwkv7_ref), grads(rwkv7_chunked, chunk_size=8)):
        assert_close(f"d{name}", ref, got, 1e-5)


def test_forms_compute_in_fp32_and_return_the_input_dtype():
    x, s0 = wkv_inputs(1, 12, 2, 8, 8, LOG_DECAY_SCALE)
    o_ref, s_ref = rwkv7_ref(*x, s0)
    o, s = rwkv7_chunked(*(t.bfloat16() for t in x), s0, chunk_size=4)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close("bf16 inputs", o_ref, o, 2e-2)  # only the inputs are rounded


# Peng et al. 2025 (arXiv:2503.14456): RWKV7-World3 models of 0.19B, 0.45B, 1.52B and 2.9B (2.95B) parameters,
# counted with the embedding and the separate head (vocab 65536).
PUBLISHED = {"0.1b": 0.19e9, "0.4b": 0.45e9, "1.5b": 1.52e9, "2.9b": 2.95e9}


@pytest.mark.parametrize("size", PUBLISHED)
def test_param_count_matches_paper(size):
    model = registry.build("rwkv7", size, device="meta")
    assert model.params() == sum(p.numel() for p in model.parameters())
    assert abs(model.params() / PUBLISHED[size] - 1) < 0.02, model.params()


def fla_state_dict_shapes(c):
    """Parameter names and shapes of fla 0.6's RWKV7ForCausalLM (fla/layers/rwkv7.py, fla/models/rwkv7)."""
    d, H, K = c.d_model, c.n_heads, c.head_size
    shapes = {"model.embeddings.weight": (c.vocab_size, d), "lm_head.weight": (c.vocab_size, d)}
    for name in ("model.norm", "model.layers.0.pre_norm"):
        shapes.update({f"{name}.weight": (d,), f"{name}.bias": (d,)})
    for i in range(c.n_layers):
        p = f"model.layers.{i}"
        for norm in ("attn_norm", "ffn_norm", "attn.g_norm"):
            shapes.update({f"{p}.{norm}.weight": (d,), f"{p}.{norm}.bias": (d,)})
        shapes.update({f"{p}.attn.x_{n}": (1, 1, d) for n in "rwkvag"})
        shapes.update({f"{p}.attn.k_k": (d,), f"{p}.attn.k_a": (d,), f"{p}.attn.r_k": (H, K)})
        shapes.update({f"{p}.attn.{n}_proj.weight": (d, d) for n in "rkvo"})
        loras = {"w": c.decay_lora, "a": c.a_lora, "g": c.gate_lora, **({"v": c.v_lora} if i > 0 else {})}
        for n, rank in loras.items():
            shapes[f"{p}.attn.{n}_lora.lora.0.weight"] = (rank, d)
            shapes[f"{p}.attn.{n}_lora.lora.2.weight"] = (d, rank)
            if n != "g":
                shapes[f"{p}.attn.{n}_lora.lora.2.bias"] = (d,)
        shapes.update({f"{p}.ffn.x_k": (d,), f"{p}.ffn.key.weight": (c.ffn_dim, d)})
        shapes[f"{p}.ffn.value.weight"] = (d, c.ffn_dim)
    return shapes


def test_fla_names_map_onto_every_parameter():
    config = registry.config("rwkv7", "tiny")
    torch.manual_seed(0)
    fla_sd = {name: torch.randn(shape) for name, shape in fla_state_dict_shapes(config).items()}
    model = registry.family("rwkv7").MODEL(config)
    hf.load_state_dict_into(model, from_fla_state_dict(fla_sd), "fla")  # strict: names and shapes
    own = model.state_dict()
    assert torch.equal(own["layers.1.attn.v_lora.down.weight"], fla_sd["model.layers.1.attn.v_lora.lora.0.weight"])
    assert torch.equal(own["embed.weight"], fla_sd["model.embeddings.weight"])
    assert torch.equal(own["lm_head.weight"], fla_sd["lm_head.weight"])


@pytest.mark.gpu
@pytest.mark.parametrize("T", [20, 100], ids=["T20-fused-recurrent", "T100-chunk"])
def test_logits_match_fla(T):
    pytest.importorskip("fla")
    from fla.models import RWKV7ForCausalLM

    config = registry.config("rwkv7", "tiny")
    torch.manual_seed(0)
    theirs = RWKV7ForCausalLM(to_fla_config(config)).cuda().float().eval()
    with torch.no_grad():  # fla zero-initialises o_proj and the LoRA downs: perturb every weight
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = registry.family("rwkv7").MODEL(config).cuda().eval()
    hf.load_state_dict_into(ours, from_fla_state_dict(theirs.state_dict()), "fla")
    x = torch.randint(0, config.vocab_size, (2, T), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        expected = theirs(x).logits
        got, _ = ours(x)
    # fp32 on an H100 (fla 0.6.0): 4e-7 through fused_recurrent, 2.3e-4 through chunk
    assert_close(f"fla T={T}", expected, got, 1e-3)
