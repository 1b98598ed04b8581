"""Zamba2's shared blocks: weights shared across uses, adapters and KV caches per use; RoPE in the shared
attention (forward == segmented forward == step, positions carried by the KV cache), logits and greedy
decoding against transformers' Zamba2ForCausalLM with RoPE on; the released sizes' parameter counts."""

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models import hf
from altbench.models.attention import KVCache
from altbench.models.zamba2 import HybridLayer, from_hf_config, to_hf_config
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout
# tiny with RoPE: as Zamba2-1.2B (q/k/v adapters), and as Zamba2-7B (MLP adapters only, 2 Mamba-2 groups)
ROPE = {
    "adapters": dict(rope=True),
    "mlp-adapters-only": dict(rope=True, rope_theta=500.0, attn_adapters=False, n_groups=2),
}


def test_shared_blocks_alternate_and_each_use_has_its_own_kv_cache():
    torch.manual_seed(0)
    model = registry.build("zamba2", "tiny", dtype=torch.float32, n_layers=9, pattern="MHMHMHMHM").eval()
    hybrids = [layer for layer in model.layers if isinstance(layer, HybridLayer)]
    blocks = [layer.shared_transformer for layer in hybrids]
    assert blocks[0] is blocks[2] and blocks[1] is blocks[3] and blocks[0] is not blocks[1]  # n_shared = 2, in turn
    adapters = blocks[0].self_attn.linear_q_adapter_list
    assert [len(list(a.parameters())) > 0 for a in adapters] == [True, False, True, False]  # uses 0 and 2
    with torch.no_grad():
        _, state = model(torch.randint(0, 256, (2, 7)))
    caches = [s[0] for layer, s in zip(model.layers, state) if isinstance(layer, HybridLayer)]
    assert len(caches) == 4 and all(isinstance(c, KVCache) and c.length == 7 for c in caches)
    assert len({id(c.k) for c in caches}) == 4
    named = dict(model.named_parameters(remove_duplicate=False))  # uses 2 and 3 repeat blocks 0 and 1
    shared = sum(p.numel() for b in blocks[:2] for p in b.parameters())
    assert sum(p.numel() for p in named.values()) == model.params() + shared + model.embed.weight.numel()  # + tied head


def test_rope_forward_segments_and_steps_agree():
    """With RoPE a token's position is its KV cache's length: one forward, a forward over segments with
    the state carried, and token-by-token steps give the same logits, and RoPE changes them."""
    torch.manual_seed(0)
    model = registry.build("zamba2", "tiny", dtype=torch.float32, rope=True).eval()
    x = torch.randint(0, 256, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(x)
        state, parts = None, []
        for segment in x.split([11, 1, 9, 8], dim=1):
            logits, state = model(segment, state)
            parts.append(logits)
        _, prefilled = model(x[:, :21])
        state, steps = model.init_state(2), []
        for t in range(29):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
            if t >= 21:
                logits, prefilled = model.step(x[:, t], prefilled)
                assert_close(f"prefill + step {t}", full[:, t], logits, RTOL)
        for layer in model.layers:
            if isinstance(layer, HybridLayer):
                layer.shared_transformer.self_attn.rotary = None
        no_rope, _ = model(x)
    assert_close("segmented", full, torch.cat(parts, 1), RTOL)
    assert_close("step", full, torch.stack(steps, 1), RTOL)
    assert ((no_rope - full).norm() / full.norm()).item() > 1e-2


def pair(**overrides):
    """transformers' Zamba2ForCausalLM at tiny with `overrides`, and the altbench model on its weights."""
    torch.manual_seed(0)
    config = registry.config("zamba2", "tiny", **overrides)
    theirs = pytest.importorskip("transformers").Zamba2ForCausalLM(to_hf_config(config)).eval()
    ours = registry.family("zamba2").MODEL(config).eval()
    hf.load_state_dict_into(ours, hf.from_hf("zamba2", theirs.state_dict()), "test")
    return ours, theirs


@pytest.mark.parametrize("variant", ROPE)
def test_rope_logits_and_greedy_decoding_match_transformers(variant):
    ours, theirs = pair(**ROPE[variant])
    x = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(3))
    prompt = x[:1, :12]
    with torch.no_grad():
        assert_close(variant, theirs(x).logits, ours(x)[0], RTOL)
        expected = theirs.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, 12:]
        logits, state = ours(prompt)
        token, got = logits[:, -1].argmax(-1), []
        for _ in range(8):
            got.append(token.item())
            logits, state = ours.step(token, state)
            token = logits.argmax(-1)
    assert got == expected.tolist()


@pytest.mark.parametrize("size", ["1.2b", "2.7b", "7b"])
def test_hf_config_round_trip_of_the_released_sizes(size):
    """to_hf_config then from_hf_config gives the size back; config.json files written before
    transformers' rope_parameters carry rope_theta at the top level."""
    config = registry.config("zamba2", size)
    d = to_hf_config(config).to_dict()
    assert from_hf_config(d) == config
    legacy = {k: v for k, v in d.items() if k != "rope_parameters"} | {"rope_theta": 500.0}
    assert from_hf_config(legacy).rope_theta == 500.0


def test_scaled_rope_is_refused():
    d = to_hf_config(registry.config("zamba2", "1.2b")).to_dict()
    d["rope_parameters"] = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(UserError, match="rope_type = 'linear'"):
        from_hf_config(d)


# Glorioso et al. 2024 (arXiv:2411.15242, abstract): "a suite of 1.2B, 2.7B, and 7.4B parameter" models.
# Counted on the meta device: 1,215,064,704 / 2,662,214,560 / 7,356,749,648, each equal to transformers'
# Zamba2ForCausalLM built from to_hf_config (the bf16 safetensors of Zyphra/Zamba2-1.2B, 2.43 GB, and of the
# transformers-format Zyphra/Zamba2-2.7B-instruct, 4.94 GB + 384 MB, hold the same counts).
PUBLISHED = {"1.2b": 1.2e9, "2.7b": 2.7e9, "7b": 7.4e9}


@pytest.mark.parametrize("size", PUBLISHED)
def test_param_count_matches_published(size):
    count = registry.param_count("zamba2", size)
    figure = PUBLISHED[size]
    assert abs(count - figure) / figure <= 0.02, f"{size}: {count:,} params vs published {figure:,.0f}"
    with torch.device("meta"):
        theirs = pytest.importorskip("transformers").Zamba2ForCausalLM(to_hf_config(registry.config("zamba2", size)))
    assert count == sum(p.numel() for p in theirs.parameters())
