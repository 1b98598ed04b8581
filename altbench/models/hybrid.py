"""Hybrids declared without code: a layer pattern, a map from its letters to mixers, and one MLP kind.

A suite declares one as

    [hybrids.my-hybrid]
    pattern = "MMAM"        one letter per layer
    M = "mamba2"            letter -> a mixer name of MIXERS
    A = "attention"
    mlp = "swiglu"          swiglu | geglu | none

and every layer is the shared `Block` (models/compose.py): x + mixer(RMSNorm(x)), then
+ mlp(RMSNorm(.)). Each mixer takes its family's defaults at the hybrid's width, so a hybrid is a
composition of the same mixers the registered families use, not a new implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from altbench.errors import UserError
from altbench.models.base import LanguageModel, LMConfig
from altbench.models.blocks import GeGLU, SwiGLU
from altbench.models.compose import check_pattern, pattern_blocks


def _attention(c):
    from altbench.models.attention import Attention, AttentionConfig

    return Attention(AttentionConfig(c.d_model, c.n_heads, c.n_heads))


def _mamba(c):
    from altbench.models.mamba import MambaConfig, MambaMixer

    return MambaMixer(MambaConfig(d_model=c.d_model, norm_eps=c.norm_eps))


def _mamba2(c):
    from altbench.models.mamba2 import Mamba2Config, Mamba2Mixer

    return Mamba2Mixer(Mamba2Config(d_model=c.d_model, norm_eps=c.norm_eps, head_dim=2 * c.d_model // c.n_heads))


def _gla(c):
    from altbench.models.gla import GatedLinearAttention, GLAConfig

    return GatedLinearAttention(GLAConfig(d_model=c.d_model, norm_eps=c.norm_eps, n_heads=c.n_heads))


def _retention(c):
    from altbench.models.retnet import MultiScaleRetention, RetNetConfig

    return MultiScaleRetention(RetNetConfig(d_model=c.d_model, norm_eps=c.norm_eps, n_heads=c.n_heads))


def _griffin(c):
    from altbench.models.griffin import GriffinConfig

    return GriffinConfig(d_model=c.d_model, norm_eps=c.norm_eps, n_heads=c.n_heads, lru_blocks=c.n_heads)


def _rglru(c):
    from altbench.models.griffin import RecurrentBlock

    return RecurrentBlock(_griffin(c))


def _local_attention(c):
    from altbench.models.griffin import LocalAttention

    return LocalAttention(_griffin(c))


def _mlstm(c):
    from altbench.models.xlstm import MLSTMLayer, XLSTMConfig

    return MLSTMLayer(XLSTMConfig(d_model=c.d_model, norm_eps=c.norm_eps, n_heads=c.n_heads))


def _hyena(c):
    from altbench.models.hyena import HyenaConfig, HyenaOperator

    return HyenaOperator(HyenaConfig(d_model=c.d_model, norm_eps=c.norm_eps))


MIXERS: dict[str, Callable[["HybridConfig"], nn.Module]] = {
    "attention": _attention,
    "local-attention": _local_attention,
    "mamba": _mamba,
    "mamba2": _mamba2,
    "gla": _gla,
    "retention": _retention,
    "rglru": _rglru,
    "mlstm": _mlstm,
    "hyena": _hyena,
}
MLPS = ("swiglu", "geglu", "none")


@dataclass
class HybridConfig(LMConfig):
    pattern: str = ""  # one letter per layer
    mixers: dict[str, str] = field(default_factory=dict)  # letter -> a name in MIXERS
    mlp: str = "swiglu"  # one of MLPS
    d_hidden: int = 0  # MLP width; 0 means 3 d_model
    n_heads: int = 0  # heads of every mixer that has them; 0 means d_model / 64 (at least 4)
    where: str = "hybrid"  # where the declaration came from, for error messages

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not 0 < len(self.pattern) <= 1024:
            raise UserError(f"{self.where}: 'pattern' must be a string, one mixer letter per layer (at most 1024), "
                            f"e.g. \"MMAM\"")
        for key in ("d_hidden", "n_heads"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1 << 16:
                raise UserError(f"{self.where}: '{key}' must be a whole number from 1 to 65536, got {value!r}")
        self.n_layers = len(self.pattern)
        self.d_hidden = self.d_hidden or 3 * self.d_model
        self.n_heads = self.n_heads or max(4, self.d_model // 64)
        if (self.d_model // 2) % self.n_heads:
            raise UserError(f"{self.where}: n_heads = {self.n_heads} must divide d_model / 2 = {self.d_model // 2}")
        for letter, name in self.mixers.items():
            if len(letter) != 1 or not isinstance(name, str) or name not in MIXERS:
                known = ", ".join(MIXERS)
                raise UserError(f"{self.where}: {letter} = {name!r} is not a mixer; known mixers: {known}")
        check_pattern(self.pattern, self.n_layers, "".join(self.mixers), key=f"{self.where} pattern")
        if not isinstance(self.mlp, str) or self.mlp not in MLPS:
            raise UserError(f"{self.where}: mlp = {self.mlp!r} is unknown; known: {', '.join(MLPS)}")


class Hybrid(LanguageModel):
    def __init__(self, c: HybridConfig):
        mlp = {
            "swiglu": lambda i: SwiGLU(c.d_model, c.d_hidden),
            "geglu": lambda i: GeGLU(c.d_model, c.d_hidden),
            "none": lambda i: None,
        }[c.mlp]
        blocks = pattern_blocks(
            c.pattern,
            mixers={letter: (lambda i, name=name: MIXERS[name](c)) for letter, name in c.mixers.items()},
            mlp=mlp,
            norm=lambda: nn.RMSNorm(c.d_model, c.norm_eps),
        )
        super().__init__(c, blocks)


def sizes(name: str, spec: dict, source: str = "") -> dict[str, HybridConfig]:
    """The named sizes of a hybrid declared as `spec` in `source`: `tiny` (CPU tests, width 64) and
    `130m`-class (width 768, the GPT-NeoX vocabulary of altbench's 130m baselines); `spec` may also
    set d_hidden and n_heads."""
    spec = dict(spec)
    pattern, mlp = spec.pop("pattern", ""), spec.pop("mlp", "swiglu")
    extra = {key: spec.pop(key) for key in ("d_hidden", "n_heads") if key in spec}
    where = f"{source} [hybrids.{name}]".strip()
    common = dict(pattern=pattern, mixers=spec, mlp=mlp, where=where, **extra)
    return {
        "tiny": HybridConfig(vocab_size=256, d_model=64, **common),
        "130m": HybridConfig(vocab_size=50280, d_model=768, **common),
    }
