"""A decode step is bound by its number of kernels (~2.5-3 us each on an H200, against well under 1 us
of weight and state bytes per layer at 130m), and every matmul the compiler leaves in a layer's step is
a cuBLAS kernel of its own. These tests trace one layer's `step` to aten ops (make_fx, on the CPU) and
count its matmuls, so that a change which splits a fused projection again, or turns element-wise work
into a matmul, fails here rather than only in a GPU profile (benchmarks/decode_profile.py). They also
check that the step builds its new state from fresh tensors: no copy_ or clone of the state, which
inside a CUDA graph would be a memcpy node of its own."""

from collections import Counter

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from altbench import registry

MATMULS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default"}
COPIES = {"aten.copy_.default", "aten.clone.default"}


def step_ops(arch: str, layer_idx: int) -> Counter:
    """aten ops of `model.layers[layer_idx].step` on one token of a tiny bf16 model."""
    torch.manual_seed(0)
    model = registry.build(arch, "tiny", dtype=torch.bfloat16).eval()
    layer, d = model.layers[layer_idx], model.config.d_model
    state = model.init_state(1)[layer_idx]
    x = torch.randn(1, d, dtype=torch.bfloat16)
    extra = (torch.randn(1, 1, d, dtype=torch.bfloat16),) if arch == "rwkv7" and layer_idx > 0 else ()  # v_first
    with torch.no_grad():
        graph = make_fx(lambda *args: layer.step(*args))(x, state, *extra)
    return Counter(str(n.target) for n in graph.graph.nodes if n.op == "call_function")


# matmuls per layer step, and what they are
EXPECTED = [
    # r/k/v (one batched matmul), the w/a/v/g LoRAs (down, up each), wkv state S a and S r (fp32), o, key, value
    ("rwkv7", 1, 14),
    ("rwkv7", 0, 12),  # layer 0 has no value-residual LoRA
    # q/k/v/o-gate/i/f (one matmul), C^T q (fp32), out_proj, SwiGLU gate/up (one matmul), down
    ("xlstm", 0, 5),
    # in_proj (x and z in one), x_proj, dt_proj, out_proj; the conv is element-wise
    ("mamba", 0, 4),
]


@pytest.mark.parametrize("arch, layer_idx, matmuls", EXPECTED, ids=[f"{a}-layer{i}" for a, i, _ in EXPECTED])
def test_layer_step_matmuls_and_no_state_copies(arch, layer_idx, matmuls):
    ops = step_ops(arch, layer_idx)
    assert sum(ops[op] for op in MATMULS) == matmuls, {op: ops[op] for op in MATMULS if ops[op]}
    assert sum(ops[op] for op in COPIES) == 0, {op: ops[op] for op in COPIES if ops[op]}
