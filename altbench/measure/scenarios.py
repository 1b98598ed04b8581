"""What a cell measures: prefill, decode, a training step, the mixer alone (`kernel`), the
generation of G tokens after a prompt (`generate`), and the cost of reasoning over a puzzle
(`reasoning`).

Each function takes a built model, the cell and the input generator, runs the timing protocol of
`measure/timing.py` and returns the row's figures. They never catch errors: the worker turns an
exception into the row's status.
"""

from __future__ import annotations

import torch

from altbench.measure import energy
from altbench.measure.fastpath import fast_call, regions
from altbench.measure.timing import time_calls
from altbench.models.base import CAUSAL_STEP, ITERATIVE, MASKED_DIFFUSION, SEGMENTED_PREFILL


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
                     compile=regions(model, "forward", s.compile_scope) if s.compile_prefill else None,
                     graphs=s.cuda_graphs and cell.seq_len <= s.graph_max_len, tokens=tokens)
    if row["compiled"]:
        row["compile_scope"] = s.compile_scope
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
        row = _timed(lambda tokens, state: model.step(tokens, state), (ids[:, -1], state), cell, device,
                     compile=regions(model, "step", s.compile_scope) if s.compile_decode else None,
                     graphs=s.cuda_graphs and _graphable(state), tokens=cell.batch, rewind=rewinder(state), reps=reps,
                     flush_l2=False)
    if row["compiled"]:
        row["compile_scope"] = s.compile_scope
    flops = cell.batch * model.flops_per_token(cell.seq_len)
    moved = _weight_bytes(model) + model.state_bytes(cell.batch, cell.seq_len, model.embed.weight.dtype)
    return {
        **row, **_derived(row["ms_median"], cell.batch, flops), "bytes_per_token": moved, "bytes_moved": moved,
        "bandwidth_gbs": moved / (row["ms_median"] / 1e3) / 1e9,
        "decode_prefill_tokens": min(cell.seq_len - 1, DECODE_PREFILL),
    }


def training_step(model, ids: torch.Tensor, dtype: torch.dtype, loss_of=lambda model, ids: model.train_loss(ids)):
    """The call a train step times: forward under autocast to `dtype` over fp32 weights (none for fp32),
    the model's own loss (`train_loss`: next-token cross-entropy on fp32 logits, or e.g. LLaDA's masked
    diffusion loss), backward, AdamW step. `loss_of(model, ids)` gives the loss: another library's model
    where a benchmark times it the same way (benchmarks/train_peers.py)."""
    model.float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=ids.device.type == "cuda")

    def step():
        with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_of(model, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_work(model, batch: int, seq_len: int) -> dict:
    """Analytic work of one train step of a model in fp32: FLOPs (backward ~ 2x forward) and the bytes
    it must move (see measure/roofline.py)."""
    return {"flops": batch * model.train_flops(seq_len),
            "bytes_moved": 32 * model.params() + 2 * _activation_bytes(model, batch, seq_len)}


def train_step(model, cell, device, generator) -> dict:
    """Forward + backward + AdamW step on next-token loss (`training_step`)."""
    ids = _ids(model, cell.batch, cell.seq_len, device, generator)
    step = training_step(model, ids, getattr(torch, cell.dtype))
    tokens = cell.batch * cell.seq_len
    row = _timed(step, (), cell, device, compile=None, graphs=False, tokens=tokens)
    work = training_work(model, cell.batch, cell.seq_len)
    return {**row, **_derived(row["ms_median"], tokens, work["flops"]), "bytes_moved": work["bytes_moved"]}


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


def _autoregressive(model, ids: torch.Tensor, gen_length: int, segment: int) -> torch.Tensor:
    """Greedy generation: a prefill of ids (B, L) into a state sized for L + gen_length tokens, then
    gen_length - 1 steps each fed the last argmax; the gen_length tokens (B, G)."""
    state = model.init_state(ids.shape[0], capacity=ids.shape[1] + gen_length)
    logits, state = _prefill(model, ids, segment, state)  # (B, 1, V)
    tokens = [logits[:, -1].argmax(-1)]  # (B,) each
    for _ in range(gen_length - 1):
        logits, state = model.step(tokens[-1], state)  # (B, V)
        tokens.append(logits.argmax(-1))
    return torch.stack(tokens, 1)


def generate(model, cell, device, generator) -> dict:
    """Time to produce G = gen_length tokens after a prompt of L = seq_len tokens, the whole generation
    one timed call, replayed from one CUDA graph (not compiled: a compiled step would recompile at each
    of the G cache lengths; both kinds of model run eager kernels, so they compare alike).

    Masked diffusion (MASKED_DIFFUSION): `model.generate` with the cell's N steps and block length, N
    full forwards over L + G tokens (two with guidance), no cache. Autoregressive: a prefill of L
    tokens, then G - 1 steps each fed the last argmax: G tokens from G model calls.
    """
    s, o = cell.settings, cell.extra
    G, L = o["gen_length"], cell.seq_len
    ids = _ids(model, cell.batch, L, device, generator)
    if MASKED_DIFFUSION in model.capabilities:
        N, block, passes = o["steps"], o["block_length"], 2 if o["cfg_scale"] else 1
        fn = lambda ids: model.generate(ids, G, N, block, o["remasking"], o["cfg_scale"])  # noqa: E731
        flops = passes * cell.batch * N * model.denoise_flops(L + G, block)
        moved = N * (_weight_bytes(model) + _activation_bytes(model, passes * cell.batch, L + G))
        figures = {"steps": N, "block_length": block, "model_calls": N, "remasking": o["remasking"], "cfg_scale": o["cfg_scale"]}
    else:
        fn = lambda ids: _autoregressive(model, ids, G, s.prefill_segment)  # noqa: E731
        flops = cell.batch * (model.prefill_flops(L) + sum(model.flops_per_token(L + i) for i in range(G - 1)))
        dtype = model.embed.weight.dtype
        moved = (G * _weight_bytes(model) + _activation_bytes(model, cell.batch, L)
                 + (G - 1) * model.state_bytes(cell.batch, L + G // 2, dtype))
        figures = {"model_calls": G}
    tokens = cell.batch * G
    with torch.inference_mode():
        row = _timed(fn, (ids,), cell, device, compile=None, graphs=s.cuda_graphs, tokens=tokens)
    return {**row, **_derived(row["ms_median"], tokens, flops), "bytes_moved": moved, "gen_length": G, **figures}


def reasoning(model, cell, device, generator) -> dict:
    """Cost of answering a puzzle of seq_len tokens (81 for 9x9 Sudoku), logits at every cell.

    An iterative model (ITERATIVE, e.g. HRM) runs `segments` segments of `cycles` high-level cycles
    (cell.extra), every sample all of them: halting is data-dependent, so the cost is given per
    number of segments (the paper's evaluation runs M_max). Any other model runs one forward pass
    over the puzzle, so the rows compare directly; its row's `form` says so. Graph-captured and
    compiled as `prefill` is (compile_scope "model" compiles an iterative model's `reason`);
    `ms_per_sample` is the call's median over the batch.
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
    whole = "reason" if ITERATIVE in model.capabilities and s.compile_scope == "model" else "forward"
    with torch.inference_mode():
        row = _timed(run, (ids,), cell, device,
                     compile=regions(model, whole, s.compile_scope) if s.compile_prefill else None,
                     graphs=s.cuda_graphs and cell.seq_len <= s.graph_max_len, tokens=tokens)
    if row["compiled"]:
        row["compile_scope"] = s.compile_scope
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
    if cell.measurement == "generate":
        batch = cell.batch * (2 if cell.extra.get("cfg_scale") else 1)
        tokens = cell.seq_len + cell.extra["gen_length"]
        return weights + model.state_bytes(cell.batch, tokens, dtype) + model.activation_bytes(batch, tokens, dtype)
    if cell.measurement == "train_step":
        # fp32 weights, grads, two moments; activations kept for backward in every layer
        per_layer = model.activation_bytes(cell.batch, cell.seq_len, dtype) - cell.batch * cell.seq_len * model.config.vocab_size * elt
        logits = cell.batch * cell.seq_len * model.config.vocab_size * 4 * 3
        return model.params() * 16 + model.config.n_layers * per_layer // 4 + logits
    return weights + model.state_bytes(cell.batch, cell.seq_len, dtype) + model.activation_bytes(cell.batch, tokens, dtype)


# measurement -> (capability it needs, or a tuple of which it needs one; why it does not apply without)
NEEDS = {
    "decode": (CAUSAL_STEP, "no causal step"),
    "generate": ((CAUSAL_STEP, MASKED_DIFFUSION), "neither a causal step to decode with nor a denoising sampler"),
    "lm_eval": ((CAUSAL_STEP, MASKED_DIFFUSION), "neither causal next-token probabilities nor a masked-diffusion likelihood"),
}


def lacking(capabilities: frozenset[str], measurement: str) -> str | None:
    """Why a model with `capabilities` cannot do `measurement` at all (see NEEDS), or None."""
    need = NEEDS.get(measurement)
    if need is None:
        return None
    options = {need[0]} if isinstance(need[0], str) else set(need[0])
    return None if options & capabilities else need[1]


def not_applicable(model, cell) -> str | None:
    """Why `cell`'s measurement does not apply to `model` (a capability it lacks), or None."""
    if reason := lacking(model.capabilities, cell.measurement):
        return reason
    segmented = cell.measurement in ("prefill", "kernel") and 0 < cell.settings.prefill_segment < cell.seq_len
    if segmented and SEGMENTED_PREFILL not in model.capabilities:
        return f"no state carried across prefill segments of {cell.settings.prefill_segment} tokens"
    return None


MEASURE = {"prefill": prefill, "decode": decode, "train_step": train_step, "kernel": kernel, "generate": generate,
           "reasoning": reasoning}
