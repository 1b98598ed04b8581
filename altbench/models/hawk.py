"""Hawk (De et al. 2024, arXiv:2402.19427): Griffin's residual blocks with the recurrent block as the
only temporal mixing, no attention. The code is in griffin.py; this module names Hawk's sizes."""

import dataclasses

from altbench.models.griffin import PAPER_SIZES, Griffin, GriffinConfig

HAWK = ("recurrent",)

# The paper's Table 2 sizes (Hawk was trained from 100M to 7B, sec. 3.1).
SIZES = {
    "tiny": GriffinConfig(
        vocab_size=256, d_model=64, n_layers=3, lru_blocks=4, block_types=HAWK, embed_scale=True, logits_soft_cap=30.0
    ),
    **{
        name: GriffinConfig(d_model=d, lru_width=d_rnn, n_layers=depth, n_heads=heads, block_types=HAWK)
        for name, (d, d_rnn, depth, heads) in PAPER_SIZES.items()
        if name != "14b"
    },
}
MODEL = Griffin

# Matched to the altbench 130m baselines (transformer, mamba, mamba2): GPT-NeoX vocabulary, ~130M parameters.
SIZES["130m"] = dataclasses.replace(SIZES["100m"], vocab_size=50280)
