"""Mixture-of-Experts MLP: a top-k softmax router over E SwiGLU experts, and optional shared experts.

Routing (Shazeer et al. 2017; Mixtral, Jiang et al. 2024, sec. 2.1), per token x:

    p = softmax(x W_router)                         (E,) in fp32
    S = the k largest entries of p                  w_e = p_e for e in S, renormalised to sum 1
                                                    when `norm_topk` (Mixtral; Qwen2-MoE, DeepSeek-MoE: not)
    y = sum_{e in S} w_e * SwiGLU_e(x)  [+ g(x) * SwiGLU_shared(x)]

Fine-grained and shared experts (DeepSeek-MoE, Dai et al. 2024, sec. 3): many narrow experts, and
always-on shared experts, which together are one SwiGLU of their summed width; Qwen2-MoE scales the
shared expert by g(x) = sigmoid(x w_g) (`shared_gate`). Routing is dropless: every token reaches its
k experts (no capacity factor), so the dropped-token count is always 0.

The experts' weights are stacked as transformers stores them: gate_up (E, 2 H, d) (gate rows first),
down (E, d, H). Two forms compute the experts' sum with the same contract:

    experts_ref(x, idx, w, gate_up, down)       a loop over experts, gathering each one's tokens
    experts_grouped(x, idx, w, gate_up, down)   token slots sorted by expert, two grouped GEMMs
                                                (`torch._grouped_mm` over per-expert row offsets)

    x: (N, d)   idx: (N, k) int64 expert of each slot   w: (N, k) weight of each slot   -> (N, d)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from altbench.errors import UserError
from altbench.models.base import linear_flops
from altbench.models.blocks import SwiGLU


@dataclass
class MoEConfig:
    d_model: int
    d_expert: int  # H, hidden width of one routed expert
    n_experts: int  # E
    top_k: int  # k experts per token
    norm_topk: bool = True  # renormalise the k weights to sum 1 (Mixtral)
    d_shared: int = 0  # summed width of the shared experts; 0 means none
    shared_gate: bool = False  # scale the shared experts by sigmoid(x w_g) (Qwen2-MoE)

    def __post_init__(self):
        if not 0 < self.top_k <= self.n_experts:
            raise UserError(f"top_k = {self.top_k} must be between 1 and n_experts = {self.n_experts}; lower top_k")


def _swiglu_rows(x, gate_up, down):
    """x: (n, d); gate_up: (2H, d); down: (d, H) -> (n, d): one expert on its rows."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)  # (n, H) each
    return F.linear(F.silu(gate) * up, down)


def experts_ref(x, idx, w, gate_up, down):
    """The weighted sum of each token's k experts, one expert at a time (the ground truth)."""
    out = torch.zeros_like(x)
    for e in range(gate_up.shape[0]):
        token, slot = torch.where(idx == e)  # rows routed to expert e
        if token.numel():
            y = _swiglu_rows(x[token], gate_up[e], down[e]) * w[token, slot, None]
            out = out.index_add(0, token, y.to(x.dtype))
    return out


def experts_grouped(x, idx, w, gate_up, down):
    """Same contract as `experts_ref`: the N k token slots sorted by expert, then one grouped GEMM per
    projection over the contiguous runs (row offsets = cumulative tokens per expert)."""
    N, k = idx.shape
    E, H2, d = gate_up.shape
    assert (d * x.element_size()) % 16 == 0 and (H2 // 2 * x.element_size()) % 16 == 0, "rows need 16-byte strides"
    order = idx.flatten().argsort(stable=True)  # (N k,) slots, grouped by expert
    token = order // k
    offsets = torch.bincount(idx.flatten(), minlength=E).cumsum(0).to(torch.int32)  # (E,) end row of each expert
    xs = x[token]  # (N k, d)
    gate, up = torch._grouped_mm(xs, gate_up.transpose(-2, -1), offs=offsets).chunk(2, dim=-1)  # (N k, H) each
    ys = torch._grouped_mm((F.silu(gate) * up).contiguous(), down.transpose(-2, -1), offs=offsets)  # (N k, d)
    ys = ys * w.flatten()[order, None]
    return torch.zeros_like(x).index_add(0, token, ys.to(x.dtype))


class Experts(nn.Module):
    """E SwiGLU experts, stacked: gate_up_proj (E, 2H, d), down_proj (E, d, H)."""

    def __init__(self, n_experts: int, d_model: int, d_expert: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_expert, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        with torch.no_grad():  # nn.Linear's default range, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), per expert
            self.gate_up_proj.uniform_(-(d_model**-0.5), d_model**-0.5)
            self.down_proj.uniform_(-(d_expert**-0.5), d_expert**-0.5)


class MoE(nn.Module):
    """Router + routed experts (+ shared experts). `grouped` picks the experts' form; the tokens each
    expert received accumulate in `tokens_per_expert` (see `load_stats`)."""

    def __init__(self, c: MoEConfig):
        super().__init__()
        self.c = c
        self.gate = nn.Linear(c.d_model, c.n_experts, bias=False)  # W_router
        self.experts = Experts(c.n_experts, c.d_model, c.d_expert)
        self.shared_expert = SwiGLU(c.d_model, c.d_shared) if c.d_shared else None
        self.shared_expert_gate = nn.Linear(c.d_model, 1, bias=False) if c.shared_gate else None
        self.grouped = True
        self.register_buffer("tokens_per_expert", torch.zeros(c.n_experts, dtype=torch.int64), persistent=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, d) -> expert indices (N, k) and their weights (N, k) in x's dtype."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)  # (N, E)
        w, idx = torch.topk(probs, self.c.top_k, dim=-1)  # (N, k)
        if self.c.norm_topk:
            w = w / w.sum(-1, keepdim=True)
        return idx, w.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        flat = x.reshape(-1, x.shape[-1])  # (N, d)
        idx, w = self.route(flat)
        with torch.no_grad():
            self.tokens_per_expert += torch.bincount(idx.flatten(), minlength=self.c.n_experts)
        form = experts_grouped if self.grouped else experts_ref
        y = form(flat, idx, w, self.experts.gate_up_proj, self.experts.down_proj)  # (N, d)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            y = y + shared
        return y.view_as(x)

    def inactive_params(self) -> int:
        """Parameters of the E - k routed experts a token does not use."""
        c = self.c
        return (c.n_experts - c.top_k) * 3 * c.d_model * c.d_expert

    def flops_per_token(self) -> int:
        c = self.c
        shared = self.shared_expert.flops_per_token() if self.shared_expert is not None else 0
        shared += linear_flops(c.d_model, 1) if self.shared_expert_gate is not None else 0
        return linear_flops(c.d_model, c.n_experts) + c.top_k * 3 * linear_flops(c.d_model, c.d_expert) + shared


_EXPERT = re.compile(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def stack_experts(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert checkpoint tensors (PREFIX.experts.E.{gate,up,down}_proj.weight, the layout of the
    published Mixtral, Qwen-MoE and Jamba files) -> the stacked PREFIX.experts.gate_up_proj (E, 2H, d)
    and PREFIX.experts.down_proj (E, d, H). Other tensors pass through; works on meta tensors too."""
    out, experts = {}, {}
    for name, tensor in state_dict.items():
        match = _EXPERT.fullmatch(name)
        if match:
            prefix, e, proj = match.groups()
            experts.setdefault(prefix, {}).setdefault(proj, {})[int(e)] = tensor
        else:
            out[name] = tensor
    for prefix, projs in experts.items():
        n = 1 + max(max(ws) for ws in projs.values())

        def stacked(proj):
            return torch.stack([projs[proj][e] for e in range(n)])

        out[f"{prefix}.gate_up_proj"] = torch.cat([stacked("gate_proj"), stacked("up_proj")], dim=1)
        out[f"{prefix}.down_proj"] = stacked("down_proj")
    return out


def load_stats(model: nn.Module, reset: bool = True) -> dict | None:
    """Router load over every MoE layer since the last reset, for a measurement row: tokens per expert
    (summed over layers), the worst layer's max / mean imbalance, and dropped tokens (0: dropless).
    None for a model without MoE layers."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        return None
    per_layer = torch.stack([m.tokens_per_expert for m in layers]).double()  # (layers, E)
    mean = per_layer.mean(-1).clamp_min(1e-30)
    stats = {
        "tokens_per_expert": per_layer.sum(0).long().tolist(),
        "imbalance": (per_layer.max(-1).values / mean).max().item(),  # the worst layer's max / mean
        "dropped_tokens": 0,
    }
    if reset:
        for m in layers:
            m.tokens_per_expert.zero_()
    return stats
