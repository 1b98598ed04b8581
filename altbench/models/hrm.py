"""Hierarchical Reasoning Model (Wang et al. 2025, "Hierarchical Reasoning Model", arXiv:2506.21734).

Two recurrent modules over the same token grid (a puzzle), each a small stack of non-causal
post-norm Transformer blocks (bidirectional attention with RoPE, SwiGLU; models/compose.py): a slow
high-level module H and a fast low-level module L. With x~ = embed(x), one *segment* runs N cycles
(`h_cycles`) of T low-level steps (`l_cycles`), sec. 2 of the paper:

    for i = 1 .. N*T:
        z_L^i = f_L(z_L^{i-1} + z_H^{i-1} + x~)            L: every step
        z_H^i = f_H(z_H^{i-1} + z_L^i)   if i % T == 0    H: once per cycle, from the cycle's last L state
              = z_H^{i-1}                 otherwise
    y^ = W_O z_H^{NT}                    (B, T_puzzle, V) logits per cell
    Q^ = W_Q mean_t z_H^{NT}             (B, 2): Q_halt, Q_continue

(the modules' inputs are injected by addition). The state (z_H, z_L) starts from two fixed random
vectors, one per module, broadcast over the positions.

Training (sec. 2, "Approximate gradient", "Deep supervision", "Adaptive computational time"):
- one-step gradient: every update but the last f_L and the last f_H of a segment runs without
  gradient, so backpropagation costs one L and one H update whatever N and T are;
- deep supervision: segments m = 1, 2, ... each get their own loss and optimiser step, and the
  state passed from one segment to the next is detached;
- ACT: after each segment the Q-head decides to halt (Q_halt > Q_continue) or continue, up to
  M_max segments (`max_segments`); with probability `explore` a sample must first run a random
  M_min in [2, M_max]. Q is learnt as in the paper: Q_halt towards 1{the puzzle is solved},
  Q_continue towards the next segment's sigmoid(max(Q_halt, Q_continue)) (Q_halt at M_max).
  The loss of a segment is  CE(y^, y) + 0.5 (BCE(Q_halt, G_halt) + BCE(Q_continue, G_continue)).
  Softmax cross-entropy (the paper's small-data Sudoku runs use stablemax instead).

Contract: `forward` is one segment from the given state (None: the initial one) and returns the
next state, detached: passing it back runs the next segment over the *same* puzzle, so a model
like this has neither a causal step nor a prefill that continues a sequence (capabilities:
BIDIRECTIONAL, ITERATIVE; no CAUSAL_STEP, so decode and generate are "not applicable").
`reason(ids, segments, cycles)` runs whole segments: the `reasoning` measurement. `train_loss` is
one ACT segment's loss (`act_step`). FLOPs are counted per layer application (`flops_per_token`,
`reasoning_flops`, `train_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from altbench.errors import UserError
from altbench.models.attention import Attention, AttentionConfig
from altbench.models.base import BIDIRECTIONAL, ITERATIVE, LanguageModel, LMConfig, linear_flops
from altbench.models.blocks import SwiGLU
from altbench.models.compose import pattern_blocks


@dataclass
class HRMConfig(LMConfig):
    vocab_size: int = 11  # the paper's Sudoku tokens: pad, blank, digits 1-9
    d_model: int = 512
    n_layers: int = field(init=False, default=0)  # h_layers + l_layers, set from them
    tie_embeddings: bool = False  # separate input embedding and output head, as the paper
    n_heads: int = 8
    d_hidden: int = 1536  # SwiGLU width: expansion 4 x 2/3 of d_model, rounded up to a multiple of 256
    h_layers: int = 4  # blocks in the high-level module H
    l_layers: int = 4  # blocks in the low-level module L
    h_cycles: int = 2  # N: high-level cycles per segment
    l_cycles: int = 2  # T: low-level steps per cycle
    max_segments: int = 16  # M_max: ACT halts after at most this many segments
    explore: float = 0.1  # ACT exploration: probability of a random minimum number of segments
    rope_theta: float = 10000.0

    def __post_init__(self):
        for key in ("h_layers", "l_layers", "h_cycles", "l_cycles", "max_segments"):
            if getattr(self, key) < 1:
                raise UserError(f"hrm: {key} must be >= 1, got {getattr(self, key)}; set {key} to a positive integer")
        self.n_layers = self.h_layers + self.l_layers


@dataclass
class ACTState:
    """The training batch in flight: each sample's puzzle, its carried state and its segment count."""

    inputs: torch.Tensor  # (B, T) puzzle tokens
    targets: torch.Tensor  # (B, T) solution tokens
    mask: torch.Tensor  # (B, T) bool, the scored cells
    z_h: torch.Tensor  # (B, T, d) detached
    z_l: torch.Tensor  # (B, T, d) detached
    steps: torch.Tensor  # (B,) segments run on the current puzzle
    halted: torch.Tensor  # (B,) bool: replaced by a fresh puzzle at the next step


class HRM(LanguageModel):
    capabilities = frozenset({BIDIRECTIONAL, ITERATIVE})

    def __init__(self, c: HRMConfig):
        attention = AttentionConfig(c.d_model, c.n_heads, c.n_heads, c.rope_theta, causal=False)
        blocks = pattern_blocks(
            "L" * c.l_layers + "H" * c.h_layers,
            mixers={"L": lambda i: Attention(attention), "H": lambda i: Attention(attention)},
            mlp=lambda i: SwiGLU(c.d_model, c.d_hidden),
            norm=lambda: nn.RMSNorm(c.d_model, eps=c.norm_eps, elementwise_affine=False),
            post_norm=True,
        )
        super().__init__(c, blocks)
        self.norm = nn.Identity()  # post-norm blocks end normalised: the heads read z_H as it is
        self.q_head = nn.Linear(c.d_model, 2)
        with torch.no_grad():  # Q starts near "never halt" (both logits -5), as the paper's code
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        self.register_buffer("h_init", nn.init.trunc_normal_(torch.empty(c.d_model), std=1.0, a=-2.0, b=2.0))
        self.register_buffer("l_init", nn.init.trunc_normal_(torch.empty(c.d_model), std=1.0, a=-2.0, b=2.0))

    @property
    def low(self) -> nn.ModuleList:
        return self.layers[: self.config.l_layers]

    @property
    def high(self) -> nn.ModuleList:
        return self.layers[self.config.l_layers :]

    # --- the recurrence ---------------------------------------------------------------------------
    @staticmethod
    def _module(blocks: nn.ModuleList, z: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            z, _ = block(z, None)
        return z

    def l_update(self, z_l, z_h, x):
        """z_L <- f_L(z_L + z_H + x~)"""
        return self._module(self.low, z_l + z_h + x)

    def h_update(self, z_h, z_l):
        """z_H <- f_H(z_H + z_L)"""
        return self._module(self.high, z_h + z_l)

    def initial_state(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_H, z_L) at the start of a puzzle, shaped like the embedded input (B, T, d)."""
        return self.h_init.to(like.dtype).expand_as(like), self.l_init.to(like.dtype).expand_as(like)

    def segment(self, x: torch.Tensor, state, cycles: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment: `cycles` (default N) cycles of T L-updates and one H-update, from `state`
        (z_H, z_L) over the embedded puzzle x (B, T, d). Only the last L- and H-update carry gradient."""
        z_h, z_l = state
        T = self.config.l_cycles
        with torch.no_grad():
            for i in range((cycles or self.config.h_cycles) * T - 1):
                z_l = self.l_update(z_l, z_h, x)
                if (i + 1) % T == 0:
                    z_h = self.h_update(z_h, z_l)
        z_l = self.l_update(z_l, z_h, x)
        z_h = self.h_update(z_h, z_l)
        return z_h, z_l

    def heads(self, z_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) from z_H, and Q (B, 2) = (halt, continue) in fp32 from its mean over positions."""
        return self.lm_head(z_h), self.q_head(z_h.mean(1)).float()

    # --- the contract -----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, state=None, last_only: bool = False):
        """input_ids: (B, T) -> logits (B, T, V) after one segment from `state` (None: the initial
        state), and the next state (z_H, z_L), detached: the next segment's start over the same puzzle."""
        x = self.embed(input_ids)  # (B, T, d)
        z_h, z_l = self.segment(x, state if state is not None else self.initial_state(x))
        logits, _ = self.heads(z_h[:, -1:] if last_only else z_h)
        return logits, (z_h.detach(), z_l.detach())

    def reason(self, input_ids: torch.Tensor, segments: int, cycles: int | None = None, halt: bool = False):
        """Up to `segments` segments of `cycles` cycles (default N) over each puzzle: the final logits
        (B, T, V) and the segments each sample ran (B,). Without `halt` every sample runs all of them
        (the paper's evaluation runs M_max); with it a sample stops after the first segment whose
        Q says halt (Q_halt > Q_continue) and keeps that segment's logits."""
        self.check_reasoning(segments, cycles if cycles is not None else self.config.h_cycles)
        x = self.embed(input_ids)  # (B, T, d)
        state = self.initial_state(x)
        used = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        halted = torch.zeros_like(used, dtype=torch.bool)
        logits = None
        for _ in range(segments):
            state = tuple(s.detach() for s in self.segment(x, state, cycles))
            out, q = self.heads(state[0])
            logits = out if logits is None else torch.where(halted[:, None, None], logits, out)
            used += (~halted).long()
            if halt:
                halted = halted | (q[:, 0] > q[:, 1])
                if bool(halted.all()):
                    break
        return logits, used

    def check_reasoning(self, segments: int, cycles: int) -> None:
        """UserError naming the key and the fix for a number of cycles or segments this model cannot run."""
        if cycles < 1:
            raise UserError(f"cycles must be >= 1, got {cycles}; give a positive number of high-level cycles")
        if not 1 <= segments <= self.config.max_segments:
            raise UserError(f"segments must be in 1..{self.config.max_segments} (max_segments), got {segments}; "
                            f"lower it or raise max_segments")

    def step(self, tokens, state):
        raise NotImplementedError("HRM has no causal step: it reasons over the whole puzzle at once")

    def init_state(self, batch: int, device=None, dtype=None, capacity: int = 0):
        """None: the state depends on the puzzle's length and starts from fixed vectors (`initial_state`)."""
        return None

    # --- ACT training -------------------------------------------------------------------------------
    def act_step(self, state: ACTState | None, inputs, targets, mask) -> tuple[torch.Tensor, ACTState, torch.Tensor]:
        """One deep-supervision segment of ACT training over a batch in flight: samples that halted
        (all of them when `state` is None) take the fresh puzzle of the same row of (inputs, targets,
        mask) and the initial state; every sample runs one segment; returns the segment's loss (mean
        over samples), the next state (detached) and which samples the segment solved (B,) bool."""
        c = self.config
        if state is not None:
            row = state.halted[:, None]
            inputs = torch.where(row, inputs, state.inputs)
            targets = torch.where(row, targets, state.targets)
            mask = torch.where(row, mask, state.mask)
        x = self.embed(inputs)  # (B, T, d)
        z_h, z_l = self.initial_state(x)
        steps = torch.ones(inputs.shape[0], dtype=torch.long, device=inputs.device)
        if state is not None:
            keep = ~state.halted[:, None, None]
            z_h, z_l = torch.where(keep, state.z_h, z_h), torch.where(keep, state.z_l, z_l)
            steps = torch.where(state.halted, steps, state.steps + 1)

        z_h, z_l = self.segment(x, (z_h, z_l))
        logits, q = self.heads(z_h)
        cells = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)
        lm_loss = ((cells * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()
        with torch.no_grad():
            solved = ((logits.argmax(-1) == targets) | ~mask).all(1)  # (B,)
        loss = lm_loss + 0.5 * F.binary_cross_entropy_with_logits(q[:, 0], solved.float())

        with torch.no_grad():
            last = steps >= c.max_segments
            halted = last
            if c.max_segments > 1:
                halted = halted | (q[:, 0] > q[:, 1])
                explore = torch.rand(steps.shape, device=steps.device) < c.explore
                least = torch.randint(2, c.max_segments + 1, steps.shape, device=steps.device)
                halted = halted & (steps >= torch.where(explore, least, 0))
                _, q_next = self.heads(self.segment(x, (z_h, z_l))[0])
                target = torch.sigmoid(torch.where(last, q_next[:, 0], q_next.max(1).values))
        if c.max_segments > 1:
            loss = loss + 0.5 * F.binary_cross_entropy_with_logits(q[:, 1], target)
        return loss, ACTState(inputs, targets, mask, z_h.detach(), z_l.detach(), steps, halted), solved

    def train_loss(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The loss of one ACT training segment (`act_step`) from the initial state, ids (B, T) the
        puzzles and every cell scored against its own token: an HRM training step at its full cost
        (the `train_step` measurement) on inputs that come without solutions; the probe trainer
        calls `act_step` with real ones. ACT's exploration draws only decide halting, which the
        loss does not depend on, so the loss draws nothing from `generator`."""
        loss, _, _ = self.act_step(None, ids, ids, torch.ones_like(ids, dtype=torch.bool))
        return loss

    # --- accounting ---------------------------------------------------------------------------------
    def _module_flops(self, blocks, length: int) -> int:
        """Per-token FLOPs of one module application over a puzzle of `length` tokens (every token
        attends all `length` of them)."""
        return sum(block.flops_per_token(length - 1) for block in blocks)

    def segment_flops_per_token(self, length: int, cycles: int | None = None) -> int:
        """One segment per token: N (T L-updates + one H-update) + the output head (Q-head: per sample, negligible)."""
        c = self.config
        per_cycle = c.l_cycles * self._module_flops(self.low, length) + self._module_flops(self.high, length)
        return (cycles or c.h_cycles) * per_cycle + linear_flops(c.d_model, c.vocab_size)

    def flops_per_token(self, context: int) -> int:
        """One segment's forward FLOPs per token of a puzzle of `context` tokens."""
        return self.segment_flops_per_token(context)

    def prefill_flops(self, length: int) -> int:
        return length * self.segment_flops_per_token(length)

    def reasoning_flops(self, length: int, segments: int, cycles: int | None = None) -> int:
        return segments * length * self.segment_flops_per_token(length, cycles)

    def train_flops(self, length: int) -> int:
        """One ACT training segment (`act_step`): the segment's forward, the next segment's forward
        for the Q_continue target (when max_segments > 1), and backward (~2x) through the one-step
        gradient path only: the last L- and H-update and the output head."""
        c = self.config
        forwards = 2 if c.max_segments > 1 else 1
        grad_path = self._module_flops(self.low, length) + self._module_flops(self.high, length)
        return forwards * self.prefill_flops(length) + 2 * length * (grad_path + linear_flops(c.d_model, c.vocab_size))

    def layer_calls(self, segments: int = 1, cycles: int | None = None) -> int:
        c = self.config
        return segments * (cycles or c.h_cycles) * (c.l_cycles * c.l_layers + c.h_layers)

    def state_bytes(self, batch: int, context: int, dtype: torch.dtype = torch.bfloat16) -> int:
        """The carried (z_H, z_L): 2 x (B, T, d)."""
        return 2 * batch * context * self.config.d_model * torch.finfo(dtype).bits // 8


# `27m` is the paper's model (sec. 3 and its released Sudoku / maze / ARC config): d 512, 8 heads,
# 4 + 4 blocks, N = T = 2, M_max = 16, exploration 0.1; 27.3M parameters.
SIZES = {
    "tiny": HRMConfig(vocab_size=256, d_model=64, n_heads=4, d_hidden=192, h_layers=1, l_layers=1,
                      h_cycles=2, l_cycles=2, max_segments=4),
    "27m": HRMConfig(),
}
MODEL = HRM
