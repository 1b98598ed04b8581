"""What a cell measures: prefill, decode, a training step, and the mixer alone (`kernel`).

Each function takes a built model, the cell and the input generator, runs the timing protocol of
`measure/timing.py` and returns the row's figures. They never catch errors: the worker turns an
exception into the row's status.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from altbench.measure.timing import time_calls


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


def prefill(model, cell, device, generator) -> dict:
    s = cell.settings
    ids = _ids(model, cell.batch, cell.seq_len, device, generator)
    with torch.inference_mode():
        timing = time_calls(
            lambda: _prefill(model, ids, s.prefill_segment), device, s.reps, s.warmup, s.min_time_s, budget_s=s.budget_s
        )
    flops = cell.batch * model.prefill_flops(cell.seq_len)
    return {**timing.row(), **_derived(timing.median, cell.batch * cell.seq_len, flops), "segment": s.prefill_segment}


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


def _graphable(state) -> bool:
    """States of tensors (and plain numbers, which a graph bakes in) can be graph-captured."""
    if isinstance(state, (torch.Tensor, int, float)):
        return True
    if isinstance(state, (list, tuple)):
        return all(_graphable(s) for s in state)
    return hasattr(state, "fill_random")  # KV cache: writes in place at a fixed slot


def _graph_step(model, token: torch.Tensor, state):
    """Capture one `step` at this context in a CUDA graph; returns its replay function.

    Every replay is one decode step at the same context: recurrent states are read and new ones
    written to graph-owned buffers; KV caches write the same slot and attend over the same length
    (their lengths are rewound after each warm-up call and the capture).
    """
    caches = list(_caches(state))
    lengths = [c.length for c in caches]

    def rewind():
        for cache, length in zip(caches, lengths):
            cache.length = length

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model.step(token, state)
            rewind()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.step(token, state)
    rewind()
    return graph.replay


def decode(model, cell, device, generator) -> dict:
    """Per-token latency of `step` at context seq_len (see `decode_state` for how it is built)."""
    s = cell.settings
    reps = max(s.reps, s.decode_tokens)
    ids = _ids(model, cell.batch, min(cell.seq_len, DECODE_PREFILL + 1), device, generator)
    with torch.inference_mode():
        state = decode_state(model, ids, cell.seq_len, s.prefill_segment, headroom=reps + s.warmup + 8)
        token = ids[:, -1]
        graphs = device.type == "cuda" and s.cuda_graphs and _graphable(state)
        if graphs:
            fn = _graph_step(model, token, state)
        else:
            box = {"state": state}  # eager decode advances the state (a KV cache grows by one per step)

            def fn():
                _, box["state"] = model.step(token, box["state"])

        timing = time_calls(fn, device, reps, s.warmup, s.min_time_s, flush_l2=False, budget_s=s.budget_s)
    flops = cell.batch * model.flops_per_token(cell.seq_len)
    weight_bytes = model.params() * torch.finfo(model.embed.weight.dtype).bits // 8
    state_bytes = model.state_bytes(cell.batch, cell.seq_len, model.embed.weight.dtype)
    return {
        **timing.row(), **_derived(timing.median, cell.batch, flops), "cuda_graphs": graphs,
        "bytes_per_token": weight_bytes + state_bytes,
        "bandwidth_gbs": (weight_bytes + state_bytes) / (timing.median / 1e3) / 1e9,
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

    timing = time_calls(step, device, s.reps, s.warmup, s.min_time_s, budget_s=s.budget_s)
    flops = 3 * cell.batch * model.prefill_flops(cell.seq_len)  # backward ~ 2x forward
    return {**timing.row(), **_derived(timing.median, cell.batch * cell.seq_len, flops)}


def kernel(model, cell, device, generator) -> dict:
    """The first layer's sequence mixer alone (`block.mix`: attention, SSM, recurrence; no norm,
    residual or MLP) over seq_len random activations, in prefill segments with carried state:
    the op that separates the architectures, without the layers they share."""
    s = cell.settings
    block = model.layers[0]
    dtype = model.embed.weight.dtype
    x = torch.randn(cell.batch, cell.seq_len, model.config.d_model, generator=generator).to(device, dtype)
    segment = s.prefill_segment or cell.seq_len

    def run():
        state = None
        for start in range(0, cell.seq_len, segment):
            _, state = block.mix(x[:, start : start + segment], state)

    with torch.inference_mode():
        timing = time_calls(run, device, s.reps, s.warmup, s.min_time_s, budget_s=s.budget_s)
    # No FLOP figure: the contract counts FLOPs per layer, not per mixer.
    tokens_per_s = cell.batch * cell.seq_len / (timing.median / 1e3)
    return {**timing.row(), "tokens_per_s": tokens_per_s, "segment": s.prefill_segment}


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


MEASURE = {"prefill": prefill, "decode": decode, "train_step": train_step, "kernel": kernel}
