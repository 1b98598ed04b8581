"""Zamba2's shared blocks: weights shared across uses, adapters and KV caches per use."""

import torch

from altbench import registry
from altbench.models.attention import KVCache
from altbench.models.zamba2 import HybridLayer


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
