"""LLaDA, a masked diffusion language model (Nie et al. 2025, "Large Language Diffusion Models",
arXiv:2502.09992).

The mask predictor p_theta(. | x_t) is a Llama-style Transformer without the causal mask: RMSNorm,
SwiGLU, RoPE, every layer a `Block` of bidirectional `Attention` (models/attention.py, causal=False)
and a SwiGLU MLP. A sequence x_0 of T tokens is corrupted by the forward process

    t ~ U(0, 1]          x_t^i = M (the mask token) with probability t, else x_0^i, for each i

and the model learns to recover the masked tokens with the loss (the paper's Eq. 3, here averaged
over the B x T positions as its training guidelines do)

    L(theta) = -E_{t, x_0, x_t} [ 1/t * sum_i 1[x_t^i = M] log p_theta(x_0^i | x_t) ]

an upper bound on the negative log-likelihood. `generate` runs the reverse process: the G answer
positions start as M; N denoising steps each predict every masked position of the current block and
keep the k most confident predictions (low-confidence remasking; or k random ones), block after
block from left to right (semi-autoregressive), with optional classifier-free guidance. There is no
causal step and no state carried between calls: every step is a full forward over prompt + answer.

The log-likelihood of an answer r_0 (R tokens) after a prompt p_0 is estimated by Monte Carlo from
the paper's lower-variance form of the bound

    log p(r_0 | p_0) >= E_{l ~ U{1..R}, r_l} [ R/l * sum_i 1[r_l^i = M] log p_theta(r_0^i | p_0, r_l) ]

where r_l masks l of the R answer tokens, chosen uniformly without replacement (`loglikelihood`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from altbench.errors import UserError
from altbench.models.base import BIDIRECTIONAL, MASKED_DIFFUSION, LanguageModel, LMConfig, linear_flops
from altbench.models.transformer import llama_blocks

REMASKING = ("low_confidence", "random")  # which predictions a step keeps: the most confident, or random ones


@dataclass
class LLaDAConfig(LMConfig):
    n_heads: int = 12
    n_kv_heads: int = 12  # < n_heads gives grouped-query attention
    d_hidden: int = 2304  # SwiGLU width
    rope_theta: float = 10000.0
    mask_token_id: int = 50277  # M; inside the vocabulary (here GPT-NeoX's first unused padded id)
    min_mask_ratio: float = 1e-3  # t ~ U(min_mask_ratio, 1]: keeps the 1/t weight finite


def masked_diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of -log p(target) / t, divided by B x T.

    logits (B, T, V)   targets, masked (B, T)   t (B, 1): the mask ratio each sequence was drawn with
    """
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)  # (B, T)
    return (nll * masked / t).sum() / targets.numel()


def unmask_schedule(gen_length: int, steps: int, block_length: int) -> list[list[int]]:
    """Tokens revealed at each step of each block: gen_length / block_length blocks of
    steps / blocks steps each; a block's tokens spread as evenly as the steps allow, the extra ones
    first (the linear schedule reveals the same expected number at every step). UserError naming the
    key for settings that cannot be met."""
    if gen_length < 1:
        raise UserError(f"'gen_length' must be at least 1, got {gen_length}")
    if not 1 <= steps <= gen_length:
        raise UserError(f"'steps' {steps} must be between 1 and gen_length {gen_length} (each step reveals at least one token)")
    if block_length < 1 or gen_length % block_length:
        raise UserError(f"'block_length' {block_length} must divide gen_length {gen_length}; use a divisor of {gen_length}")
    blocks = gen_length // block_length
    if steps % blocks:
        raise UserError(f"'steps' {steps} must be a multiple of the {blocks} blocks (gen_length {gen_length} / block_length "
                        f"{block_length}); use e.g. {max(blocks, steps // blocks * blocks)}")
    base, extra = divmod(block_length, steps // blocks)
    return [[base + (i < extra) for i in range(steps // blocks)] for _ in range(blocks)]


def _uniform(shape: tuple, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) drawn from `generator` (on its own device), returned on `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=dtype).to(device)


class LLaDA(LanguageModel):
    capabilities = frozenset({BIDIRECTIONAL, MASKED_DIFFUSION})

    def __init__(self, c: LLaDAConfig):
        if not 0 <= c.mask_token_id < c.vocab_size:
            raise UserError(f"'mask_token_id' {c.mask_token_id} is outside the vocabulary of {c.vocab_size} tokens")
        super().__init__(c, llama_blocks(c, causal=False))

    # --- the mask predictor ------------------------------------------------------------------------
    def denoise(self, ids: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, end - start, V) of positions start..end-1, every position seeing all T."""
        x = self.embed(ids)  # (B, T, d)
        for layer in self.layers:
            x, _ = layer(x, None)
        return self.lm_head(self.norm(x[:, start:end]))

    def forward(self, input_ids: torch.Tensor, state=None, last_only: bool = False) -> tuple[torch.Tensor, None]:
        """input_ids (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`; no state to return."""
        if state is not None:
            raise ValueError("LLaDA carries no state between calls; pass state=None")
        return self.denoise(input_ids, input_ids.shape[1] - 1 if last_only else 0), None

    def step(self, tokens, state):
        raise NotImplementedError("LLaDA has no causal step: it generates by denoising (see `generate`)")

    def init_state(self, batch, device=None, dtype=None, capacity=0):
        raise NotImplementedError("LLaDA has no state: every call is a full bidirectional forward")

    def prefill_flops(self, length: int) -> int:
        """A forward over `length` tokens: every token attends to all `length` keys."""
        return length * self.flops_per_token(length - 1)

    def denoise_flops(self, length: int, head_tokens: int) -> int:
        """`denoise` over `length` tokens with logits for `head_tokens` of them."""
        c = self.config
        return self.prefill_flops(length) - (length - head_tokens) * linear_flops(c.d_model, c.vocab_size)

    # --- training ----------------------------------------------------------------------------------
    def train_loss(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The masked diffusion loss on ids (B, T), one mask ratio t per sequence (module docstring)."""
        c = self.config
        B, T = ids.shape
        t = c.min_mask_ratio + (1 - c.min_mask_ratio) * (1 - _uniform((B, 1), generator, ids.device))  # (B, 1), in (min, 1]
        masked = _uniform((B, T), generator, ids.device) < t  # (B, T)
        logits, _ = self(torch.where(masked, c.mask_token_id, ids))  # (B, T, V)
        return masked_diffusion_loss(logits, ids, masked, t)

    # --- sampling ----------------------------------------------------------------------------------
    def _guided_logits(self, x: torch.Tensor, prompt_len: int, start: int, end: int, cfg_scale: float) -> torch.Tensor:
        """Logits of positions start..end-1; with guidance w > 0, u + (1 + w)(c - u) where u is
        predicted with the prompt masked (unsupervised classifier-free guidance)."""
        if cfg_scale == 0:
            return self.denoise(x, start, end)  # (B, end - start, V)
        unconditional = x.clone()
        unconditional[:, :prompt_len] = self.config.mask_token_id
        cond, uncond = self.denoise(torch.cat([x, unconditional]), start, end).chunk(2)
        return uncond + (cfg_scale + 1) * (cond - uncond)

    def _propose(self, logits: torch.Tensor, remasking: str, temperature: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (B, K, V) -> (predicted tokens (B, K), confidence (B, K)): argmax, or a sample at
        `temperature` by the Gumbel-max trick in float64 (low precision biases it, arXiv:2409.02908);
        confidence is the prediction's log-probability, or uniform noise for random remasking. M is
        never predicted: x_0 holds no mask token."""
        logits = logits.float().clone()
        logits[..., self.config.mask_token_id] = -torch.inf
        if temperature > 0:
            u = _uniform(logits.shape, generator, logits.device, torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
            guess = (logits.double() / temperature - torch.log(-torch.log(u))).argmax(-1)
        else:
            guess = logits.argmax(-1)
        if remasking == "low_confidence":
            confidence = logits.log_softmax(-1).gather(-1, guess[..., None])[..., 0]
        else:
            confidence = _uniform(guess.shape, generator, logits.device)
        return guess, confidence

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, gen_length: int, steps: int, block_length: int,
                 remasking: str = "low_confidence", cfg_scale: float = 0.0, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """prompt (B, L) -> (B, L + gen_length): the prompt, then the answer after `steps` denoising
        steps over blocks of `block_length` (see `unmask_schedule`)."""
        if remasking not in REMASKING:
            raise UserError(f"'remasking' must be one of {', '.join(REMASKING)}, got {remasking!r}")
        schedule = unmask_schedule(gen_length, steps, block_length)
        B, L = prompt.shape
        mask = self.config.mask_token_id
        x = torch.cat([prompt, prompt.new_full((B, gen_length), mask)], dim=1)  # (B, L + G)
        for b, counts in enumerate(schedule):
            start, end = L + b * block_length, L + (b + 1) * block_length
            for k in counts:
                block = x[:, start:end]  # (B, block_length)
                guess, confidence = self._propose(self._guided_logits(x, L, start, end, cfg_scale), remasking, temperature, generator)
                confidence = confidence.masked_fill(block != mask, -torch.inf)
                reveal = torch.zeros_like(block, dtype=torch.bool).scatter_(1, confidence.topk(k, dim=1).indices, True)
                x[:, start:end] = torch.where(reveal, guess, block)
        return x

    # --- likelihood --------------------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, context: torch.Tensor, continuation: torch.Tensor, samples: int, batch_size: int,
                      generator: torch.Generator | None = None) -> float:
        """context (C,), continuation (R,) -> the mean over `samples` Monte-Carlo draws of the lower
        bound on log p(continuation | context) (module docstring), `batch_size` draws per forward."""
        C, R = len(context), len(continuation)
        if R == 0:
            return 0.0
        seq = torch.cat([context, continuation])  # (C + R,)
        total = 0.0
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            count = 1 + (_uniform((n, 1), generator, seq.device, torch.float64) * R).long()  # (n, 1): l ~ U{1..R}
            ranks = _uniform((n, R), generator, seq.device).argsort(1).argsort(1)  # (n, R): a random permutation
            masked = ranks < count  # (n, R): l positions, uniformly without replacement
            noisy = seq.repeat(n, 1)  # (n, C + R)
            noisy[:, C:] = torch.where(masked, self.config.mask_token_id, continuation)
            logp = self.denoise(noisy, C).float().log_softmax(-1)  # (n, R, V)
            logp = logp.gather(-1, continuation.expand(n, R)[..., None])[..., 0]  # (n, R)
            total += ((logp * masked).sum(1) * R / count[:, 0]).sum().item()
        return total / samples


# `130m` is matched to altbench's Transformer 130m (same shape, one padded vocabulary slot as M).
# `8b` is the paper's LLaDA 8B (Table 5): 32 layers, d 4096, 32 heads and 32 KV heads, FFN 12,288,
# vocabulary 126,464, untied embedding and head, 8.02B parameters; its [MASK] is id 126336 and
# RoPE's base 500,000 as in the released checkpoint's config.
SIZES = {
    "tiny": LLaDAConfig(vocab_size=257, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_hidden=192, mask_token_id=256),
    "130m": LLaDAConfig(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_hidden=2304),
    "8b": LLaDAConfig(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_hidden=12288,
                      rope_theta=500000.0, mask_token_id=126336, tie_embeddings=False),
}
MODEL = LLaDA
