"""The model contract every architecture implements.

A `LanguageModel` is token embedding -> N residual blocks -> final RMSNorm -> LM head. Each block
owns its slice of the recurrent state (an SSM state, a conv window, a KV cache, ...) and implements

    forward(x, state) -> (x, state)   parallel / chunked form over x: (B, T, d_model)
    step(x, state)    -> (x, state)   one token, x: (B, d_model); O(1) in context for recurrences
    init_state(batch, device, dtype, capacity) -> state
    state_bytes(batch, context, dtype) -> int    analytic size of that state
    flops_per_token(context) -> int              forward FLOPs of one token at position `context`

so that the model can expose the same methods. Parameters are counted from the modules, not
derived: `params()` (free on the meta device) and `active_params()`, the parameters one token
uses, which differ where a module runs only part of itself per token (a Mixture-of-Experts MLP
reports what it skips through `inactive_params()`). `state=None` means the zero / empty state.
Passing the state returned by `forward` into the next call continues the sequence: a long
prefill can run in segments with memory that does not grow with its length (recurrent models).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# What a model can be measured doing (`LanguageModel.capabilities`); each measurement names the ones it
# needs (`measure.scenarios.not_applicable`), and a model without one gets a "not applicable" row.
CAUSAL_STEP = "causal_step"  # step(): one token from a carried state, O(1) or O(context) per token
SEGMENTED_PREFILL = "segmented_prefill"  # forward(x, state) continues the sequence that built `state`
BIDIRECTIONAL = "bidirectional"  # every position sees every other (no causal mask): no step, no carried state
MASKED_DIFFUSION = "masked_diffusion"  # generate() by denoising, loglikelihood() by Monte Carlo (LLaDA)
ITERATIVE = "iterative"  # reason(ids, segments, cycles): recurrent cycles and segments over one input (HRM)


@dataclass
class LMConfig:
    """Fields every architecture's config has (each family subclasses this, flat)."""

    vocab_size: int = 50280  # GPT-NeoX tokenizer (50277) padded to a multiple of 8, as Mamba/Pythia
    d_model: int = 768
    n_layers: int = 12
    norm_eps: float = 1e-5
    tie_embeddings: bool = True


def linear_flops(d_in: int, d_out: int) -> int:
    """Multiply-add count of y = x W for one token, as FLOPs (2 per multiply-add)."""
    return 2 * d_in * d_out


class LanguageModel(nn.Module):
    """Embedding -> residual blocks -> norm -> LM head, with the state-carrying contract above."""

    config: LMConfig
    capabilities: frozenset[str] = frozenset({CAUSAL_STEP, SEGMENTED_PREFILL})

    def __init__(self, config: LMConfig, blocks: list[nn.Module]):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # --- the contract -------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, state: list | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, list]:
        """input_ids: (B, T) -> logits (B, T, V), state after the last token.

        `last_only` computes logits for the last position only, (B, 1, V): what a prefill before
        decoding needs, without materialising B x T x V logits at long T.
        """
        x = self.embed(input_ids)  # (B, T, d)
        state = state if state is not None else [None] * len(self.layers)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer(x, s)
            new_state.append(s)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)), new_state

    def step(self, tokens: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """tokens: (B,) or (B, 1) -> logits (B, V) of the next token, and the advanced state."""
        x = self.embed(tokens.reshape(-1))  # (B, d)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new_state.append(s)
        return self.lm_head(self.norm(x)), new_state

    def train_loss(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The loss a training step minimises on ids (B, T): next-token cross-entropy, the mean over the
        B x (T - 1) predicted tokens. A family trained otherwise (masked diffusion) overrides it;
        `generator` seeds whatever randomness its loss draws (None: torch's default generator)."""
        return next_token_loss(self(ids)[0], ids)

    def init_state(self, batch: int, device=None, dtype=None, capacity: int = 0) -> list:
        """Empty state for `batch` sequences; `capacity` pre-sizes KV caches (ignored by recurrences)."""
        device = device if device is not None else self.embed.weight.device
        dtype = dtype if dtype is not None else self.embed.weight.dtype
        return [layer.init_state(batch, device, dtype, capacity) for layer in self.layers]

    def state_bytes(self, batch: int, context: int, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of the state after `context` tokens (KV cache grows with context; SSM state does not)."""
        return sum(layer.state_bytes(batch, context, dtype) for layer in self.layers)

    def params(self) -> int:
        """Parameters held by the modules (a tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def active_params(self) -> int:
        """Parameters one token uses: all, less what routed modules skip per token (`inactive_params`)."""
        skipped = sum(m.inactive_params() for m in self.modules() if hasattr(m, "inactive_params"))
        return self.params() - skipped

    def flops_per_token(self, context: int) -> int:
        """Forward FLOPs for one token at position `context` (LM head included, embedding lookup not)."""
        c = self.config
        return linear_flops(c.d_model, c.vocab_size) + sum(l.flops_per_token(context) for l in self.layers)

    def activation_bytes(self, batch: int, tokens: int, dtype: torch.dtype) -> int:
        """Estimated peak activation memory of an inference forward over `tokens` tokens.

        A generic bound (a dozen d_model-wide intermediates per token alive at once, plus the
        logits); families whose kernels need more workspace override it.
        """
        c = self.config
        return batch * tokens * (12 * c.d_model + c.vocab_size) * torch.finfo(dtype).bits // 8

    def layer_calls(self) -> int:
        """Layer applications in one forward: n_layers, more where layers are applied repeatedly (HRM)."""
        return self.config.n_layers

    def train_flops(self, length: int) -> int:
        """FLOPs of one training step (forward + backward) over `length` tokens: backward ~ 2x forward."""
        return 3 * self.prefill_flops(length)

    def prefill_flops(self, length: int) -> int:
        """Forward FLOPs of a prefill over `length` tokens: sum of per-token FLOPs over positions.

        Exact for costs linear in the position (attention); constant costs are just length x cost.
        """
        return length * self.flops_per_token(length // 2)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) at positions < T against ids (B, T) shifted by one, in fp32."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def swap_layer_op(path: str, op):
    """A `BACKENDS` entry: sets `layer.<path>` (e.g. "mixer.scan") to `op` in every layer, where
    `op` has the contract of the PyTorch op it replaces (see `registry.use_backend`)."""
    owner, name = path.rsplit(".", 1)

    def apply(model: "LanguageModel") -> None:
        for layer in model.layers:
            setattr(operator.attrgetter(owner)(layer), name, op)

    return apply


def state_nbytes(state) -> int:
    """Bytes held by a real state: tensors in nested lists/tuples/dicts, and objects exposing
    `tensors()` (e.g. a KV cache, which counts only its filled slots). Checks `state_bytes`."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(s) for s in state)
    if isinstance(state, dict):
        return sum(state_nbytes(s) for s in state.values())
    if hasattr(state, "tensors"):
        return state_nbytes(list(state.tensors()))
    return 0
