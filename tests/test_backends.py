"""Backends swap a model's mixer op for another implementation of the same contract: the whole
model must give the same logits and carried state through each backend (Triton runs on the CPU in
interpret mode)."""

import os

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from conftest import assert_close

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# arch -> tiny overrides giving the kernel its smallest supported dims (>= 16)
TRITON_ARCHS = {"mamba2": dict(head_dim=16), "retnet": {}}


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


def test_unknown_backend_for_an_arch_is_a_user_error():
    with pytest.raises(UserError, match=r"backend fla has no implementation of mamba; mamba runs on: torch"):
        registry.build("mamba", "tiny", backend="fla")
    assert registry.backends_of("mamba2") == ["torch", "triton", "mamba_ssm"]
