"""What a cell measures: prefill, decode, a training step, the mixer alone (`kernel`), and the cost
of reasoning over a puzzle (`reasoning`).

Each function takes a built model, the cell and the input generator, runs the timing protocol of
`measure/timing.py` and returns the row's figures. They never catch errors: the worker turns an
exception into the row's status.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from altbench.measure import energy
from altbench.measure.fastpath import fast_call
from altbench.measure.timing import time_calls
from altbench.models.base import CAUSAL_STEP, ITERATIVE, SEGMENTED_PREFILL


def _ids(model, batch: int, length: int, device, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator).to(device)


def _prefill(model, ids: torch.Tensor, segment: int, state=None):
    """Forward over ids in segments of `segment` tokens (0: one call), carrying state; last logits only."""
    segment = segment or ids.shape[1]
    logits = None
    for start in range(0, ids.shape[1], segment):
        logits, state = model(ids[:, start : start + segment], state, last_only=True)
    return logits, state


def _derived(ms: float, tokens: int, flops: int) -> dict:
    return {"tokens_per_s": tokens / (ms / 1e3), "flops": flops, "tflops": flops / (ms / 1e3) / 1e12}


def _weight_bytes(model) -> int:
    return model.params() * torch.finfo(model.embed.weight.dtype).bits // 8


def _activation_bytes(model, batch: int, tokens: int) -> int:
    """The residual stream read and written once per layer call: what any forward must move at least."""
    c = model.config
    return 2 * batch * tokens * c.d_model * model.layer_calls() * torch.finfo(model.embed.weight.dtype).bits // 8


def _timed(fn, args, cell, device, compile, graphs: bool, tokens: int, rewind=lambda: None, reps: int = 0,
           flush_l2: bool = True) -> dict:
    """Time `fn(*args)` on its fast path (measure/fastpath.py; `compile` = (modules, method) or None,
    applied on a GPU only), then its energy per token: the row's timing, path and energy fields."""
    s = cell.settings
    fast = fast_call(fn, args, device, compile=compile if device.type == "cuda" else None, graphs=graphs, rewind=rewind)
    timing = time_calls(fast.call, device, reps or s.reps, s.warmup, s.min_time_s, flush_l2=flush_l2, budget_s=s.budget_s)
    row = {**timing.row(), **fast.row()}
    if s.energy:
        row.update(energy.joules_per_token(fast.call, device, tokens, timing.median))
    return row


def prefill(model, cell, device, generator) -> dict:
    """Forward over seq_len tokens (in segments of prefill_segment, carrying state), last logits only;
    graph-captured up to graph_max_len tokens, compiled when compile_prefill is set."""
    s = cell.settings
    ids = _ids(model, cell.batch, cell.seq_len, device, generator)
    tokens = cell.batch * cell.seq_len
    with torch.inference_mode():
        row = _timed(lambda ids: _prefill(model, ids, s.prefill_segment), (ids,), cell, device,
                     compile=(list(model.layers), "forward") if s.compile_prefill else None,
                     graphs=s.cuda_graphs and cell.seq_len <= s.graph_max_len, tokens=tokens)
    flops = cell.batch * model.prefill_flops(cell.seq_len)
    moved = _weight_bytes(model) + _activation_bytes(model, cell.batch, cell.seq_len) + model.state_bytes(
        cell.batch, cell.seq_len, model.embed.weight.dtype)
    return {**row, **_derived(row["ms_median"], tokens, flops), "bytes_moved": moved, "segment": s.prefill_segment}


DECODE_PREFILL = 8192  # real prefill before decode; longer contexts extend KV caches directly


def _caches(state):
    """The KV caches in a state tree (objects that grow with context and expose `fill_random`)."""
    if isinstance(state, (list, tuple)):
        for s in state:
            yield from _caches(s)
    elif hasattr(state, "fill_random"):
        yield state


def decode_state(model, ids: torch.Tensor, context: int, segment: int, headroom: int):
    """The state at `context` tokens, as `step` would see it after a prefill of context - 1 tokens.

    A real (segmented) prefill of min(context - 1, DECODE_PREFILL) tokens builds every state; a
    state that stops growing with context (recurrences, sliding windows) is then exactly the size
    and cost it has at any longer context. KV caches, the one state that keeps growing, are
    extended with random keys and values to context - 1 tokens: decode cost depends on the cache
    size, not its values, and a real million-token attention prefill would take minutes per cell.
    """
    warm = min(context - 1, DECODE_PREFILL)
    state = model.init_state(ids.shape[0], capacity=warm + headroom)
    if warm:
        _, state = _prefill(model, ids[:, :warm], segment, state)
    for cache in _caches(state):
        cache.fill_random(context - 1, headroom)
    return state


def rewinder(state):
    """A function that puts every KV cache in `state` back to its current length: a step appends one
    token to each, so rewinding after it makes every call the same step at the same context."""
    caches = list(_caches(state))
    lengths = [c.length for c in caches]

    def rewind():
        for cache, length in zip(caches, lengths):
            cache.length = length

    return rewind


def _graphable(state) -> bool:
    """States of tensors (and plain numbers, which a graph bakes in) can be graph-captured."""
    if isinstance(state, (torch.Tensor, int, float)):
        return True
    if isinstance(state, (list, tuple)):
        return all(_graphable(s) for s in state)
    return hasattr(state, "fill_random")  # KV cache: writes in place at a fixed slot


def decode(model, cell, device, generator) -> dict:
    """Per-token latency of `step` at context seq_len (see `decode_state` for how it is built): the
    step compiled (compile_decode) and replayed from a CUDA graph, every call at the same context."""
    s = cell.settings
    reps = max(s.reps, s.decode_tokens)
    ids = _ids(model, cell.batch, min(cell.seq_len, DECODE_PREFILL + 1), device, generator)
    with torch.inference_mode():
        state = decode_state(model, ids, cell.seq_len, s.prefill_segment, headroom=8)
        row = _timed(model.step, (ids[:, -1], state), cell, device,
                     compile=(list(model.layers), "step") if s.compile_decode else None,
                     graphs=s.cuda_graphs and _graphable(state), tokens=cell.batch, rewind=rewinder(state), reps=reps,
                     flush_l2=False)
    flops = cell.batch * model.flops_per_token(cell.seq_len)
    moved = _weight_bytes(model) + model.state_bytes(cell.batch, cell.seq_len, model.embed.weight.dtype)
    return {
        **row, **_derived(row["ms_median"], cell.batch, flops), "bytes_per_token": moved, "bytes_moved": moved,
        "bandwidth_gbs": moved / (row["ms_median"] / 1e3) / 1e9,
        "decode_prefill_tokens": min(cell.seq_len - 1, DECODE_PREFILL),
    }


def train_step(model, cell, device, generator) -> dict:
    """Forward + backward + AdamW step on next-token loss; bf16/fp16 cells use autocast over fp32 weights."""
    s = cell.settings
    model.float().train()
    ids = _ids(model, cell.batch, cell.seq_len, device, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    dtype = getattr(torch, cell.dtype)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits, _ = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens = cell.batch * cell.seq_len
    row = _timed(step, (), cell, device, compile=None, graphs=False, tokens=tokens)
    flops = cell.batch * model.train_flops(cell.seq_len)
    moved = 32 * model.params() + 2 * _activation_bytes(model, cell.batch, cell.seq_len)  # see measure/roofline.py
    return {**row, **_derived(row["ms_median"], tokens, flops), "bytes_moved": moved}


def kernel(model, cell, device, generator) -> dict:
    """The first layer's sequence mixer alone (`block.mix`: attention, SSM, recurrence; no norm,
    residual or MLP) over seq_len random activations, in prefill segments with carried state:
    the op that separates the architectures, without the layers they share. Graph-captured and
    compiled as `prefill` is."""
    s = cell.settings
    block = model.layers[0]
    dtype = model.embed.weight.dtype
    x = torch.randn(cell.batch, cell.seq_len, model.config.d_model, generator=generator).to(device, dtype)
    segment = s.prefill_segment or cell.seq_len

    def run(x):
        state = None
        for start in range(0, cell.seq_len, segment):
            _, state = block.mix(x[:, start : start + segment], state)

    tokens = cell.batch * cell.seq_len
    with torch.inference_mode():
        row = _timed(run, (x,), cell, device, compile=([block.mixer], "forward") if s.compile_prefill else None,
                     graphs=s.cuda_graphs and cell.seq_len <= s.graph_max_len, tokens=tokens)
    # No FLOP figure: the contract counts FLOPs per layer, not per mixer. Bytes: its input read, output written.
    moved = 2 * x.numel() * x.element_size()
    return {**row, "tokens_per_s": tokens / (row["ms_median"] / 1e3), "bytes_moved": moved, "segment": s.prefill_segment}


def reasoning(model, cell, device, generator) -> dict:
    """Cost of answering a puzzle of seq_len tokens (81 for 9x9 Sudoku), logits at every cell.

    An iterative model (ITERATIVE, e.g. HRM) runs `segments` segments of `cycles` high-level cycles
    (cell.extra), every sample all of them: halting is data-dependent, so the cost is given per
    number of segments (the paper's evaluation runs M_max). Any other model runs one forward pass
    over the puzzle, so the rows compare directly; its row's `form` says so. Graph-captured and
    compiled as `prefill` is; `ms_per_sample` is the call's median over the batch.
    """
    s = cell.settings
    ids = _ids(model, cell.batch, cell.seq_len, device, generator)
    if ITERATIVE in model.capabilities:
        cycles, segments = cell.extra["cycles"], cell.extra["segments"]
        model.check_reasoning(segments, cycles)
        run = lambda ids: model.reason(ids, segments, cycles)  # noqa: E731
        flops = cell.batch * model.reasoning_flops(cell.seq_len, segments, cycles)
        calls = model.layer_calls(segments, cycles)
        shape = {"cycles": cycles, "segments": segments, "l_steps": model.config.l_cycles,
                 "form": f"{segments} segment(s) of {cycles} cycle(s) of {model.config.l_cycles} L-steps"}
    else:
        run = lambda ids: model(ids)  # noqa: E731
        flops = cell.batch * model.prefill_flops(cell.seq_len)
        calls = model.layer_calls()
        shape = {"form": "one forward pass (not iterative)"}
    tokens = cell.batch * cell.seq_len
    with torch.inference_mode():
        row = _timed(run, (ids,), cell, device,
                     compile=(list(model.layers), "forward") if s.compile_prefill else None,
                     graphs=s.cuda_graphs and cell.seq_len <= s.graph_max_len, tokens=tokens)
    elt = torch.finfo(model.embed.weight.dtype).bits // 8
    moved = (_weight_bytes(model) + 2 * tokens * model.config.d_model * calls * elt
             + model.state_bytes(cell.batch, cell.seq_len, model.embed.weight.dtype))
    return {**row, **_derived(row["ms_median"], tokens, flops), "bytes_moved": moved, "layer_calls": calls,
            "ms_per_sample": row["ms_median"] / cell.batch, **shape}


def predicted_bytes(model, cell) -> int:
    """Analytic peak memory of the cell: weights (+ grads and AdamW moments for training), the
    state after seq_len tokens, and activations of one prefill segment."""
    dtype = getattr(torch, cell.dtype)
    elt = torch.finfo(dtype).bits // 8
    weights = model.params() * elt
    tokens = cell.settings.prefill_segment or cell.seq_len
    if cell.measurement == "train_step":
        # fp32 weights, grads, two moments; activations kept for backward in every layer
        per_layer = model.activation_bytes(cell.batch, cell.seq_len, dtype) - cell.batch * cell.seq_len * model.config.vocab_size * elt
        logits = cell.batch * cell.seq_len * model.config.vocab_size * 4 * 3
        return model.params() * 16 + model.config.n_layers * per_layer // 4 + logits
    return weights + model.state_bytes(cell.batch, cell.seq_len, dtype) + model.activation_bytes(cell.batch, tokens, dtype)


# measurement -> (capability it needs, why it does not apply without it)
NEEDS = {"decode": (CAUSAL_STEP, "no causal step")}


def not_applicable(model, cell) -> str | None:
    """Why `cell`'s measurement does not apply to `model` (a capability it lacks), or None."""
    need = NEEDS.get(cell.measurement)
    if need and need[0] not in model.capabilities:
        return need[1]
    segmented = cell.measurement in ("prefill", "kernel") and 0 < cell.settings.prefill_segment < cell.seq_len
    if segmented and SEGMENTED_PREFILL not in model.capabilities:
        return f"no state carried across prefill segments of {cell.settings.prefill_segment} tokens"
    return None


MEASURE = {"prefill": prefill, "decode": decode, "train_step": train_step, "kernel": kernel, "reasoning": reasoning}
