"""Backends swap a model's mixer op for another implementation of the same contract: the whole
model must give the same logits and carried state through each backend (Triton runs on the CPU in
interpret mode)."""

import os
import sys
import types

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from conftest import assert_close

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# arch -> tiny overrides giving the kernel its smallest supported dims (>= 16)
TRITON_ARCHS = {"mamba2": dict(head_dim=16), "retnet": {}, "mamba": {}}


@pytest.mark.triton
@pytest.mark.parametrize("arch", TRITON_ARCHS)
def test_triton_backend_matches_torch_with_carried_state(arch):
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = registry.build(arch, "tiny", device=device, **TRITON_ARCHS[arch]).eval()
    fast = registry.build(arch, "tiny", device=device, backend="triton", **TRITON_ARCHS[arch]).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        expected, _ = ref(x)
        first, state = fast(x[:, :23])
        second, _ = fast(x[:, 23:], state)
    rtol = 2e-3 if device == "cuda" else 1e-5  # tf32 dots on a GPU, exact fp32 in the interpreter
    assert_close(f"{arch} triton", expected, torch.cat([first, second], 1), rtol)


# one layer, and Mamba at half width (the interpreter runs its backward scan by 16-channel blocks)
TRAIN_ARCHS = {arch: {**overrides, "n_layers": 1} for arch, overrides in TRITON_ARCHS.items()} | {"mamba": dict(n_layers=1, d_model=32)}


@pytest.mark.triton
@pytest.mark.parametrize("arch", TRAIN_ARCHS)
def test_triton_backend_trains_like_torch(arch):
    """One train step's loss and every parameter's gradient through the Triton kernels' backward
    equal those through the torch forms (the registry lets train steps run on triton)."""
    pytest.importorskip("triton")
    assert registry.trains_on(arch, "triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = registry.build(arch, "tiny", device=device, **TRAIN_ARCHS[arch])
    fast = registry.build(arch, "tiny", device=device, backend="triton", **TRAIN_ARCHS[arch])
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3)).to(device)
    losses = []
    for model in (ref, fast):
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        losses.append(loss.detach())
    rtol = 2e-3 if device == "cuda" else 1e-5  # tf32 dots on a GPU, exact fp32 in the interpreter
    assert_close(f"{arch} loss", losses[0], losses[1], rtol)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert p_fast.grad is not None, f"{arch}: no gradient reached {name} through the triton backend"
        assert_close(f"{arch} d{name}", p_ref.grad, p_fast.grad, rtol)


def test_unknown_backend_for_an_arch_is_a_user_error():
    with pytest.raises(UserError, match=r"^backend fla has no implementation of mamba; mamba runs on: torch, triton, mamba_ssm$"):
        registry.build("mamba", "tiny", backend="fla")
    assert registry.backends_of("mamba2") == ["torch", "triton", "mamba_ssm"]


# A stand-in for mamba_ssm 2.3's ops/selective_scan_interface.py: the same import of the CUDA
# extension, and selective_scan_fn's layout and dtype rules (u, delta (B, D, L) of one dtype; B, C
# (B, N, L) of that dtype; A, D fp32; last state (B, D, N) fp32), computed by a loop.
FAKE_MAMBA_SSM_SCAN = """
import torch
import selective_scan_cuda  # noqa: F401


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    batch, dim, length = u.shape
    assert delta.shape == u.shape and A.shape[0] == dim and B.shape == C.shape == (batch, A.shape[1], length)
    assert delta.dtype == B.dtype == C.dtype == u.dtype and A.dtype == D.dtype == torch.float32
    h = u.new_zeros(batch, dim, A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None].float()
        h = torch.exp(dt * A) * h + dt * u[:, :, t, None].float() * B[:, None, :, t].float()
        ys.append((h * C[:, None, :, t].float()).sum(-1))
    y = (torch.stack(ys, -1) + u.float() * D[:, None]).to(u.dtype)
    return (y, h) if return_last_state else y
"""


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    """mamba_ssm importable from tmp_path, its CUDA extension not (tests may add one)."""
    ops = tmp_path / "mamba_ssm" / "ops"
    ops.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("")
    (ops / "__init__.py").write_text("")
    (ops / "selective_scan_interface.py").write_text(FAKE_MAMBA_SSM_SCAN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        del sys.modules[name]


def test_mamba_ssm_backend_without_its_cuda_extension_is_skipped(fake_mamba_ssm):
    from altbench.models.mamba import selective_scan_mamba_ssm

    u = torch.randn(1, 4, 8)
    with pytest.raises(NotImplementedError, match="without its CUDA extension selective_scan_cuda"):
        selective_scan_mamba_ssm(u, u.abs(), -torch.ones(8, 2), torch.randn(1, 4, 2), torch.randn(1, 4, 2), torch.ones(8))


def test_mamba_ssm_backend_layout_and_no_initial_state(fake_mamba_ssm, monkeypatch):
    """Through the stand-in: the adapter's transposes and casts give the reference's y and h_T, and a
    carried state is refused with a message naming the backends that take one."""
    from altbench.models.mamba import selective_scan_mamba_ssm, selective_scan_ref

    monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    gen = torch.Generator().manual_seed(3)
    B, T, Di, N = 2, 9, 6, 4
    u, delta = torch.randn(B, T, Di, generator=gen), torch.rand(B, T, Di, generator=gen)  # (B, T, Di)
    A = -torch.rand(Di, N, generator=gen) - 0.1  # (Di, N)
    Bm, Cm = torch.randn(B, T, N, generator=gen), torch.randn(B, T, N, generator=gen)  # (B, T, N)
    D = torch.randn(Di, generator=gen)
    y, h = selective_scan_mamba_ssm(u, delta, A, Bm, Cm, D)
    ref_y, ref_h = selective_scan_ref(u, delta, A, Bm, Cm, D)
    assert y.shape == (B, T, Di) and h.shape == (B, Di, N)
    assert_close("y", ref_y, y, 1e-6)
    assert_close("state", ref_h, h, 1e-6)
    with pytest.raises(NotImplementedError, match="takes no initial state; carried-state prefill needs the torch or triton backend"):
        selective_scan_mamba_ssm(u, delta, A, Bm, Cm, D, h0=ref_h)


def test_a_forward_only_backend_leaves_train_steps_to_the_next_choice():
    """TTT-Linear's Triton kernel has no backward: "fastest" measures its prefill on triton and its
    train step on torch."""
    from altbench.runner.suite import Suite

    suite = Suite(name="t", path=None, archs=["ttt-linear"], sizes=["tiny"], backends=list(registry.FASTEST), dtypes=["float32"],
                  batches=[1], seq_lens=[16], measurements={}, backend_choice="fastest")
    assert not registry.trains_on("ttt-linear", "triton") and registry.trains_on("ttt-linear", "torch")
    assert suite.backends_of("ttt-linear", "train_step") == ["torch"]
    if registry.backend_installed("triton"):
        assert suite.backends_of("ttt-linear", "prefill") == ["triton"]
