"""Checks of decode steps shared by the fast-path and step-kernel tests: a backend's decode against the
`torch` backend's, and a step as a timed call runs it (compiled, graph-replayed) against the eager step."""

import torch

from altbench import registry
from altbench.measure.fastpath import FastCall, fast_call, regions
from altbench.measure.scenarios import decode_state, rewinder
from conftest import assert_close


def decode_as_torch_backend(arch: str, backend: str, device: str, steps: int = 6) -> tuple[list, list]:
    """Tiny `arch` models on the `torch` backend and on `backend`, with the same (seeded) weights, decode
    the same `steps` tokens for a batch of 2; their logits agree at every step to 1e-5. Returns both
    final states, (torch's, backend's), for the caller to compare."""
    torch.manual_seed(0)
    ref = registry.build(arch, "tiny", device=device).eval()
    fast = registry.build(arch, "tiny", device=device, backend=backend).eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, ref.config.vocab_size, (2, steps), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        states = [m.init_state(2) for m in (ref, fast)]
        for t in range(steps):
            (expected, states[0]), (logits, states[1]) = (m.step(ids[:, t], s) for m, s in zip((ref, fast), states))
            assert_close(f"logits at step {t}", expected, logits, 1e-5)
    return states[0], states[1]


def eager_and_fast_step(model, device: str, scope: str, context: int) -> tuple[object, torch.Tensor, FastCall]:
    """`model`'s decode state at `context` random tokens (batch 2), the eager step's logits from it, and
    the same step as a timed call runs it: `step` compiled over `scope` ("layer" or "model") and, on a
    GPU, replayed from a CUDA graph. KV caches are rewound after the eager step, so both compute the
    same step at the same context. Returns (state, eager logits, fast call); call it in inference mode."""
    ids = torch.randint(0, model.config.vocab_size, (2, context), device=device)
    state = decode_state(model, ids, context=context, segment=0, headroom=8)
    rewind = rewinder(state)
    expected, _ = model.step(ids[:, -1], state)
    rewind()
    fast = fast_call(lambda tokens, state: model.step(tokens, state), (ids[:, -1], state), torch.device(device),
                     compile=regions(model, "step", scope), graphs=True, rewind=rewind)
    return state, expected, fast


def assert_graphed_step_is_eager(arch: str, scope: str, backend: str = "torch") -> None:
    """On a GPU, a tiny `arch` model's step at 33 tokens, compiled over `scope` and replayed from a CUDA
    graph, gives the eager step's logits to 1e-4."""
    torch.manual_seed(0)
    model = registry.build(arch, "tiny", device="cuda", backend=backend).eval()
    with torch.inference_mode():
        _, expected, fast = eager_and_fast_step(model, "cuda", scope, context=33)
        assert fast.compiled and fast.cuda_graphs, fast.note
        logits, _ = fast.call()
    assert_close(f"{arch} graphed step", expected, logits, 1e-4)
