"""The `fla` backend (flash-linear-attention 0.6 Triton kernels) of RWKV-7, GLA and RetNet: the op must give the
torch chunked op's output and final state, and the whole model the torch model's logits and carried state,
in one forward and in two segments. fla needs a GPU (its autotuner fails on the CPU even in interpret
mode), so only the registration runs on a CPU."""

import pytest
import torch
import torch.nn.functional as F

from altbench import registry
from altbench.models.gla import gla_chunked, gla_fla
from altbench.models.retnet import retention_chunkwise, retention_fla, retention_gammas
from altbench.models.rwkv7 import LOG_DECAY_SCALE, rwkv7_chunked, rwkv7_fla
from conftest import assert_close

# arch -> (tiny overrides giving fla's kernels head dims >= 16, the torch op, the fla op)
FLA_ARCHS = {
    "rwkv7": ({}, rwkv7_chunked, rwkv7_fla),  # head size 16
    "gla": (dict(n_heads=2), gla_chunked, gla_fla),  # key 16, value 32 per head (4 heads would give key 8)
    "retnet": ({}, retention_chunkwise, retention_fla),  # key 16, value 32 per head
}
# fp32 on a GPU, where fla's dots run in tf32. Run through Triton's CPU interpreter with tf32 rounding of
# the dot operands emulated, the largest errors here were 5e-4 (rwkv7's wkv state) and 3e-4 (gla); with
# exact fp32 dots, 1.3e-4 and 3e-7. fla's default scale (1/sqrt(K)) instead of gla's 1 gave 4e-3 in the
# logits (GroupNorm hides most of it; the op's output is off by 0.75), an untransposed rwkv7 state 1.4.
RTOL = 2e-3
BF16_RTOL = 5e-2  # bf16 inputs against the torch op on the same inputs: fla keeps bf16 intermediates


def rwkv7_inputs(B, T, H, K, g):
    """r, log_w, k, v, a = -kappa, b = kappa * iclr (|kappa| = 1, RWKV-7's range of log w), and S (B, H, V, K)."""
    r, k, v = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
    log_w = -LOG_DECAY_SCALE * torch.rand(B, T, H, K, generator=g)
    kappa = F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    iclr = torch.rand(B, T, H, K, generator=g)
    return [r, log_w, k, v, -kappa, kappa * iclr], torch.randn(B, H, K, K, generator=g)


def gla_inputs(B, T, H, K, g, V=32):
    """q (scaled), k, v, log alpha, and S (B, H, K, V)."""
    q = torch.randn(B, T, H, K, generator=g) * K**-0.5
    k, v = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, V, generator=g)
    log_alpha = F.logsigmoid(torch.randn(B, T, H, K, generator=g)) / 4
    return [q, k, v, log_alpha], torch.randn(B, H, K, V, generator=g)


def retnet_inputs(B, T, H, K, g, V=32):
    """q (scaled), k, v, the per-head decays gamma (H,), and S (B, H, K, V)."""
    q = torch.randn(B, T, H, K, generator=g) * K**-0.5
    k, v = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, V, generator=g)
    return [q, k, v, retention_gammas(H, "cpu")], torch.randn(B, H, K, V, generator=g)


OP_INPUTS = {"rwkv7": rwkv7_inputs, "gla": gla_inputs, "retnet": retnet_inputs}


def state_tensors(state):
    """A model's state (per layer: a tensor or a tuple of tensors) as a flat list of tensors."""
    return [t for s in state for t in (s if isinstance(s, tuple) else (s,))]


@pytest.mark.parametrize("arch", FLA_ARCHS)
def test_fla_is_a_backend_that_swaps_every_mixer_op(arch):
    overrides, torch_op, fla_op = FLA_ARCHS[arch]
    assert "fla" in registry.backends_of(arch)
    ref = registry.build(arch, "tiny", device="meta", **overrides)
    fast = registry.build(arch, "tiny", device="meta", backend="fla", **overrides)  # fla imported only when run
    mixer = "attn" if arch == "rwkv7" else "mixer"  # the block attribute that holds the chunked op
    op = "chunkwise" if arch == "retnet" else "chunked"
    assert [getattr(getattr(layer, mixer), op) for layer in ref.layers] == [torch_op] * len(ref.layers)
    assert [getattr(getattr(layer, mixer), op) for layer in fast.layers] == [fla_op] * len(fast.layers)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:ChunkDeltaRuleFunction does not support float32")  # fla's notice on fp32 inputs
@pytest.mark.parametrize("arch", FLA_ARCHS)
def test_fla_op_matches_torch_op(arch, device="cuda"):
    pytest.importorskip("fla")
    _, torch_op, fla_op = FLA_ARCHS[arch]
    x, s0 = OP_INPUTS[arch](2, 100, 2, 16, torch.Generator().manual_seed(0))  # T not a multiple of 64
    x, s0 = [t.to(device) for t in x], s0.to(device)
    o_ref, s_ref = torch_op(*x, s0)
    o, s = fla_op(*x, s0)
    assert o.dtype == s.dtype == torch.float32 and s.shape == s_ref.shape
    assert_close(f"{arch} fla op output", o_ref, o, RTOL)
    assert_close(f"{arch} fla op state", s_ref, s, RTOL)

    x = [t.bfloat16() for t in x]
    if arch in ("gla", "retnet"):
        x[3] = x[3].float()  # as in the model, log alpha and gamma stay fp32
    o_ref, s_ref = torch_op(*x, s0)
    o, s = fla_op(*x, s0)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close(f"{arch} fla op output, bf16", o_ref, o, BF16_RTOL)
    assert_close(f"{arch} fla op state, bf16", s_ref, s, BF16_RTOL)


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:ChunkDeltaRuleFunction does not support float32")  # fla's notice on fp32 inputs
@pytest.mark.parametrize("arch", FLA_ARCHS)
def test_fla_backend_matches_torch_with_carried_state(arch, device="cuda"):
    pytest.importorskip("fla")
    overrides = FLA_ARCHS[arch][0]
    torch.manual_seed(0)
    ref = registry.build(arch, "tiny", device=device, **overrides).eval()
    fast = registry.build(arch, "tiny", device=device, backend="fla", **overrides).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        expected, expected_state = ref(x)
        whole, _ = fast(x)
        first, state = fast(x[:, :37])  # neither segment is a multiple of fla's chunk
        second, state = fast(x[:, 37:], state)
    assert_close(f"{arch} fla, one forward", expected, whole, RTOL)
    assert_close(f"{arch} fla, two segments", expected, torch.cat([first, second], 1), RTOL)
    for i, (want, got) in enumerate(zip(state_tensors(expected_state), state_tensors(state), strict=True)):
        assert got.shape == want.shape and got.dtype == want.dtype, f"{arch} state tensor {i}"
        assert_close(f"{arch} fla state tensor {i}", want, got, RTOL)
