"""Models composed from mixers: one residual block for every architecture, built from a layer pattern.

A mixer (attention, Mamba, Mamba-2, RG-LRU, ...) maps a sequence to a sequence and owns its state:

    forward(x (B, T, d_model), state | None) -> (y, state)
    step(x (B, d_model), state) -> (y, state)                 one token
    init_state(batch, device, dtype, capacity=0) -> state
    state_bytes(batch, context, dtype) -> int
    flops_per_token(context) -> int

An MLP (dense or Mixture-of-Experts) maps (..., d_model) -> (..., d_model) and has
`flops_per_token()`. A block is the pre-norm residual of GPT-2, Llama and Mamba:

    h = x + mixer(mixer_norm(x))
    y = h + mlp(mlp_norm(h))          (no second half when mlp is None, as in Mamba)

or, with `post_norm`, the original Transformer's (Vaswani et al. 2017), which HRM's modules use:

    h = mixer_norm(x + mixer(x))
    y = mlp_norm(h + mlp(h))

A model's layers are a pattern string, one letter per layer (Jamba: "MMMMAMMM" repeated), with a
map from letters to mixer builders and an MLP builder per layer index.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from altbench.errors import UserError


class Block(nn.Module):
    """Mixer + optional MLP, each on a normalised input and added back (or, with `post_norm`, each
    added back and then normalised); `norm()` makes one norm."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module | None, norm: Callable[[], nn.Module], post_norm: bool = False):
        super().__init__()
        self.mixer_norm = norm()
        self.mixer = mixer
        self.mlp_norm = norm() if mlp is not None else None
        self.mlp = mlp
        self.post_norm = post_norm

    def mix(self, x, state):
        """The sequence mixer alone (no norm, residual or MLP): the `kernel` measurement."""
        return self.mixer(x, state)

    def forward(self, x, state):
        return self._residual(x, state, self.mixer)

    def step(self, x, state):
        return self._residual(x, state, self.mixer.step)

    def _residual(self, x, state, mix):
        if self.post_norm:
            y, state = mix(x, state)
            h = self.mixer_norm(x + y)
            return (self.mlp_norm(h + self.mlp(h)) if self.mlp is not None else h), state
        y, state = mix(self.mixer_norm(x), state)
        h = x + y
        return (h + self.mlp(self.mlp_norm(h)) if self.mlp is not None else h), state

    def init_state(self, batch, device, dtype, capacity=0):
        return self.mixer.init_state(batch, device, dtype, capacity)

    def state_bytes(self, batch, context, dtype):
        return self.mixer.state_bytes(batch, context, dtype)

    def flops_per_token(self, context):
        mlp = self.mlp.flops_per_token() if self.mlp is not None else 0
        return self.mixer.flops_per_token(context) + mlp


def check_pattern(pattern: str, n_layers: int, known: str, key: str = "pattern") -> None:
    """One line naming the key and the fix for a pattern of the wrong length or with an unknown letter."""
    if len(pattern) != n_layers:
        raise UserError(
            f"{key} '{pattern}' has {len(pattern)} letters but n_layers is {n_layers}; give one letter per layer"
        )
    bad = sorted(set(pattern) - set(known))
    if bad:
        raise UserError(f"{key} '{pattern}': unknown mixer letter '{bad[0]}'; known letters: {', '.join(known)}")


def pattern_blocks(
    pattern: str,
    mixers: dict[str, Callable[[int], nn.Module]],
    mlp: Callable[[int], nn.Module | None],
    norm: Callable[[], nn.Module],
    post_norm: bool = False,
) -> list[Block]:
    """One Block per letter: layer i gets `mixers[pattern[i]](i)` and `mlp(i)` (built in that order,
    so seeded initialisation follows the layer order)."""
    blocks = []
    for i, letter in enumerate(pattern):
        mixer = mixers[letter](i)
        blocks.append(Block(mixer, mlp(i), norm, post_norm))
    return blocks


def uniform_blocks(c, mixer: Callable[[int], nn.Module], mlp: Callable[[int], nn.Module | None]) -> list[Block]:
    """c.n_layers Blocks of one mixer, `mixer(i)` and `mlp(i)` in layer i, each normalised by
    RMSNorm(c.d_model, c.norm_eps): `pattern_blocks` for a one-letter pattern."""
    return pattern_blocks(
        "X" * c.n_layers, mixers={"X": mixer}, mlp=mlp, norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps)
    )
