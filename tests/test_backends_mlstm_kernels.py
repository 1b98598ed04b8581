"""The `mlstm_kernels` backend of xLSTM (NX-AI's Triton mLSTM kernels): its op must give the fp32 loop
`mlstm_ref`'s output and final state, and the whole model the torch model's logits and carried state.
Its backward is NX-AI's, which holds the normaliser constant: gradients are checked against
`normaliser_held_ref`, the same equations with that stop-gradient. The kernels run on the CPU in
Triton's interpreter; the tests that run them skip where mlstm_kernels (an optional peer,
`pip install mlstm_kernels`) is not installed."""

import os

import math

import pytest
import torch
import torch.nn.functional as F

from altbench import registry
from altbench.models.xlstm import _kernel_length, mlstm_chunked, mlstm_kernels_chunked, mlstm_ref
from conftest import assert_close

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 2e-3  # the kernel's fp32 dots run in tf32, on a GPU and as Triton's interpreter emulates them
# tiny xLSTM, one mLSTM and one sLSTM block: K = 128 * 0.5 / 4 = 16, V = 32 per head
TINY = dict(n_layers=2, slstm_at=(1,))


def kernel():
    pytest.importorskip("triton")
    return pytest.importorskip("mlstm_kernels.torch.chunkwise.triton_xl_chunk")


def normaliser_held_ref(q, k, v, i, f, state=None, chunk_size=0, eps=1e-6):
    """`mlstm_ref`'s output from a zero state, in the parallel form, with the stabiliser m and the
    normaliser max(|n^T q|, exp(-m)) + eps detached: the gradient mlstm_kernels' backward computes.
    With b_t = sum_{s<=t} log f_s and log D[t, s] = b_t - b_s + i_s (s <= t), m_t = max(b_t, max_s log D)
    (m_0 = 0), h_t = sum_s exp(log D - m_t) (q_t . k_s / sqrt(K)) v_s / (max(|row sum|, exp(-m_t)) + eps)."""
    assert state is None
    dtype, T = q.dtype, q.shape[1]
    q, k, v, i = (x.float() for x in (q, k, v, i))
    b = F.logsigmoid(f.float()).cumsum(1)  # (B, T, H)
    log_D = b[:, :, None] - b[:, None] + i[:, None]  # (B, T_t, T_s, H)
    log_D = log_D.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[:, :, None], -math.inf)
    m = torch.maximum(b, log_D.max(2).values).detach()  # (B, T, H)
    S = torch.einsum("bthk,bshk->btsh", q, k) * q.shape[-1] ** -0.5 * torch.exp(log_D - m[:, :, None])
    den = (torch.maximum(S.sum(2).abs(), torch.exp(-m)) + eps).detach()  # (B, T, H)
    return (torch.einsum("btsh,bshv->bthv", S, v) / den[..., None]).to(dtype), None


def cell_inputs(T, g, B=1, H=2, K=16, V=16):
    """q, k, v, soft-capped-range gates (forget biased open, as the model initialises them), and a state
    (C, n, m) as a recurrence leaves it."""
    q, k, v = (torch.randn(B, T, H, D, generator=g) for D in (K, K, V))
    i, f = torch.randn(B, T, H, generator=g) * 3, torch.randn(B, T, H, generator=g) + 4
    _, state = mlstm_ref(*(torch.randn(x.shape, generator=g) for x in (q, k, v)), i.flip(1), f, None)
    return [x.to(DEVICE) for x in (q, k, v, i, f)], tuple(s.to(DEVICE) for s in state)


def test_mlstm_kernels_is_xlstms_backend_and_swaps_only_mlstm_blocks():
    assert "mlstm_kernels" in registry.backends_of("xlstm")
    assert registry.FASTEST.index("fla") < registry.FASTEST.index("mlstm_kernels") < registry.FASTEST.index("torch")
    model = registry.build("xlstm", "tiny", device="meta", backend="mlstm_kernels", **TINY)  # imports nothing yet
    assert model.layers[0].mixer.chunked is mlstm_kernels_chunked
    assert not hasattr(model.layers[1].mixer, "chunked")  # the sLSTM block
    assert registry.build("xlstm", "tiny", device="meta", **TINY).layers[0].mixer.chunked is mlstm_chunked


@pytest.mark.parametrize("T, length", [(1, 16), (16, 16), (30, 32), (64, 64), (65, 128), (200, 256)])
def test_kernel_length_is_what_the_xl_chunk_kernel_takes(T, length):
    assert _kernel_length(T) == length


def test_a_state_that_needs_a_gradient_is_refused():
    (q, k, v, i, f), state = cell_inputs(16, torch.Generator().manual_seed(0))
    state = (state[0].requires_grad_(), *state[1:])
    with pytest.raises(NotImplementedError, match="no gradient to the entering state's normaliser"):
        mlstm_kernels_chunked(q, k, v, i, f, state)


@pytest.mark.triton
def test_op_matches_the_loop_with_a_carried_state_and_the_normaliser_held_in_its_gradients():
    kernel()
    x, state = cell_inputs(13, torch.Generator().manual_seed(1))  # padded to 16
    h_ref, state_ref = mlstm_ref(*x, state)
    h, state_out = mlstm_kernels_chunked(*x, state)
    assert h.shape == h_ref.shape and h.dtype == torch.float32
    assert_close("h", h_ref, h, RTOL)
    for name, want, got in zip("Cnm", state_ref, state_out, strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32, name
        assert_close(f"final {name}", want, got, RTOL)

    grads = []
    for op in (normaliser_held_ref, mlstm_kernels_chunked):
        leaves = [t.clone().requires_grad_() for t in x]
        h, _ = op(*leaves)
        h.backward(torch.randn(h.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE))
        grads.append([t.grad for t in leaves])
    for name, want, got in zip(["dq", "dk", "dv", "di", "df"], *grads, strict=True):
        assert_close(name, want, got, RTOL)


@pytest.mark.triton
def test_model_on_mlstm_kernels_matches_torch_in_segments_and_trains_with_the_normaliser_held():
    kernel()
    torch.manual_seed(0)
    ref = registry.build("xlstm", "tiny", device=DEVICE, **TINY)
    fast = registry.build("xlstm", "tiny", device=DEVICE, backend="mlstm_kernels", **TINY)
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.no_grad():
        expected, _ = ref(x)
        first, state = fast(x[:, :7])  # 7, then 9 from the carried state, each padded to 16
        second, _ = fast(x[:, 7:], state)
    assert_close("logits, two segments", expected, torch.cat([first, second], 1), RTOL)

    ref.layers[0].mixer.chunked = normaliser_held_ref  # the gradient NX-AI's backward computes
    for model in (ref, fast):
        logits, _ = model(x)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        assert p_fast.grad is not None, f"no gradient reached {name} through mlstm_kernels"
        assert_close(f"d{name}", p_ref.grad, p_fast.grad, RTOL)
