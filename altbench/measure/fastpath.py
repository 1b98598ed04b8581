"""Make a timed call run at the device's speed, not the host's: `torch.compile` it, then replay it
from a CUDA graph.

A ~130M model's decode step is hundreds of small kernels; launched one by one from Python it takes
the host's time, not the GPU's, and the figure would measure the harness. So a call is

    compiled  a method (`step` for decode, `forward` for prefill) of each compiled region is
              replaced by its torch.compile form, which fuses its element-wise work into few
              kernels (inductor). The regions are the layers or the whole model (`regions`,
              chosen by the `compile_scope` setting): per layer, identical layers share one
              compiled graph, so a 48-layer model compiles about as fast as one layer; the whole
              model compiles every layer into one graph (a compile many times longer), and in
              exchange inductor fuses across layer boundaries (one layer's residual add into the
              next layer's norm), a kernel fewer per layer. The compile (and any autotuning)
              happens before timing: compile_ms
    graphed   after two warm-up calls on a side stream, one call is captured in a CUDA graph and
              every timed call replays it: the same kernels on the same buffers, one launch

`fast_call` returns the callable to time and what it did. A compile failure raises `CompileError`
carrying the compiler's first line (the cell becomes an `error` row); a capture failure falls back
to calling without a graph and says so in `note`. `rewind` restores whatever a call advanced (a KV
cache's length), so every call, warm-up, capture and replay does the same work.

Compiled code and inductor's autotuning results are cached on disk by inductor
(TORCHINDUCTOR_CACHE_DIR) and Triton (TRITON_CACHE_DIR): a shape compiles once per machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

COMPILE_BACKEND = "inductor"  # tests on a CPU substitute a backend without a C++ toolchain
RECOMPILE_LIMIT = 256  # past torch's limit (8) dynamo would silently run the rest eagerly


class CompileError(RuntimeError):
    """torch.compile could not compile a measured call."""


@dataclass
class FastCall:
    call: Callable[[], object]  # what to time
    compiled: bool
    cuda_graphs: bool
    compile_ms: float | None  # compile + warm-up + capture, never part of the timed samples
    note: str = ""  # why a requested graph was not used

    def row(self) -> dict:
        return {"compiled": self.compiled, "cuda_graphs": self.cuda_graphs, "compile_ms": self.compile_ms,
                **({"fast_path_note": self.note} if self.note else {})}


def _first_line(exc: BaseException) -> str:
    """The first line of what went wrong (dynamo wraps a compiler's own error: that error's line)."""
    exc = getattr(exc, "inner_exception", None) or exc
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


COMPILE_SCOPES = ("layer", "model")


def regions(model: nn.Module, method: str, scope: str) -> tuple[list[nn.Module], str]:
    """What `compile_regions` compiles for `scope`: each of `model.layers`, or `model` itself. A call
    into the compiled model must look its method up after the compile (`lambda *a: model.step(*a)`)."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope {scope!r} is not one of {COMPILE_SCOPES}")
    return ([model] if scope == "model" else list(model.layers)), method


def compile_regions(modules: list[nn.Module], method: str) -> None:
    """Replace `module.<method>` by its compiled form on each of `modules` (see the module docstring)."""
    torch._dynamo.reset()  # a new model per cell: stale entries would count against the recompile limit
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module in modules:
        setattr(module, method, torch.compile(getattr(module, method), backend=COMPILE_BACKEND, dynamic=False))


def capture(call: Callable[[], object], rewind: Callable[[], None]) -> Callable[[], object]:
    """`call` captured in a CUDA graph (after two warm-up calls on a side stream); its replay, which
    returns the captured call's outputs (static tensors the replay rewrites)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            call()
            rewind()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    rewind()

    def replay():
        graph.replay()
        return out

    return replay


def fast_call(
    fn: Callable, args: tuple, device: torch.device, compile: tuple[list[nn.Module], str] | None, graphs: bool,
    rewind: Callable[[], None] = lambda: None,
) -> FastCall:
    """`fn(*args)` prepared for timing: `compile` = (modules, method) compiles those regions first
    (`compile_regions`); `graphs` captures the call in a CUDA graph on a GPU."""
    t0 = time.perf_counter()

    def call():
        out = fn(*args)
        rewind()
        return out

    if compile:
        compile_regions(*compile)
        try:
            for _ in range(2):  # the first call compiles, the second checks that nothing recompiles
                call()
        except Exception as e:  # noqa: BLE001 - any compiler failure is this cell's error
            raise CompileError(f"torch.compile failed: {_first_line(e)}") from e
    note, graphed = "", False
    if graphs and device.type == "cuda":
        try:
            call = capture(call, rewind)
            graphed = True
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to launching eagerly
            note = f"CUDA graph capture failed, timed without a graph ({_first_line(e)})"
            try:  # a failed capture can leave the context or its RNG unusable: then the cell fails instead
                torch.rand(1, device=device).add_(1).item()
            except Exception as poisoned:  # noqa: BLE001
                raise RuntimeError(f"{note}; the CUDA context is unusable after it: {_first_line(poisoned)}") from e
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_ms = (time.perf_counter() - t0) * 1e3 if compile or graphed else None
    return FastCall(call, bool(compile), graphed, compile_ms, note)
