"""Same weights, same logits: altbench models against the transformers classes they mirror.

The transformers model is built from a small random config (nothing is downloaded), its state
dict is mapped into the altbench model, and logits must agree in fp32; greedy decoding through
`step` must pick the same tokens as transformers' `generate`.
"""

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models import hf
from conftest import assert_close

transformers = pytest.importorskip("transformers")

# arch -> config overrides of the tiny size that exercise the interesting paths (GQA, ...)
PARITY = {
    "transformer": dict(n_kv_heads=2),
    "mamba": {},
    "griffin": dict(n_layers=4),
    "xlstm": dict(chunk_size=8),  # T=33: HF's chunkwise kernel on 32 tokens, its recurrent one on the last
    "mamba2": {},
    "mixtral": {},
    "qwen2-moe": {},  # 8 fine-grained experts, top-4 not renormalised, a gated shared expert, q/k/v biases
    "jamba": {},  # 8 layers: Mamba with inner norms, attention without RoPE at layer 4, MoE at odd layers
    "zamba2": {},  # "MMHMMH" with two shared blocks used in turn, per-use adapters
}


def pair(arch, **overrides):
    torch.manual_seed(0)
    fam = registry.family(arch)
    config = registry.config(arch, "tiny", **{**PARITY.get(arch, {}), **overrides})
    theirs = getattr(transformers, fam.HF_CLASS)(fam.to_hf_config(config)).eval()
    ours = fam.MODEL(config).eval()
    hf.load_state_dict_into(ours, hf.from_hf(arch, theirs.state_dict()), "test")
    return ours, theirs


@pytest.mark.parametrize("arch", [a for a in PARITY if a in registry.ARCHITECTURES])
def test_logits_match_transformers(arch):
    ours, theirs = pair(arch)
    x = torch.randint(0, ours.config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = theirs(x).logits
        got, _ = ours(x)
    assert_close(arch, expected, got, 1e-5)


@pytest.mark.parametrize("arch", [a for a in PARITY if a in registry.ARCHITECTURES])
def test_greedy_decoding_matches_transformers(arch):
    ours, theirs = pair(arch)
    prompt = torch.randint(0, ours.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = theirs.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, 12:]
        logits, state = ours(prompt)
        token, got = logits[:, -1].argmax(-1), []
        for _ in range(8):
            got.append(token.item())
            logits, state = ours.step(token, state)
            token = logits.argmax(-1)
    assert got == expected.tolist()


def test_load_pretrained_roundtrip_and_shape_mismatch(tmp_path):
    ours, theirs = pair("mamba")
    theirs.save_pretrained(tmp_path)
    loaded = hf.load_pretrained("mamba", tmp_path, size="tiny")
    x = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert_close("loaded", ours(x)[0], loaded(x)[0], 1e-6)
    with pytest.raises(UserError, match=r"tensor 'embed.weight' has shape \(256, 64\), the model expects"):
        hf.load_pretrained("mamba", tmp_path, size="130m")
