"""StripedHyena's modal long convolution: the loop, the FFT prefill and the recurrent step agree
(outputs, final states and every gradient), including from a carried state."""

import pytest
import torch

from altbench import registry
from altbench.models.striped_hyena import modal_fft, modal_ref, modal_step
from conftest import assert_close


def inputs(B, T, D, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, D, generator=g)
    log_poles = torch.empty(D, S).uniform_(0.5, 0.999, generator=g).log()
    residues = torch.randn(D, S, generator=g)
    s0 = torch.randn(B, D, S, generator=g)
    return u, log_poles, residues, s0


@pytest.mark.parametrize("B, T, D, S", [(2, 37, 8, 2), (1, 64, 4, 3)], ids=["B2-T37-D8-S2", "B1-T64-D4-S3"])
@pytest.mark.parametrize("carried", [False, True], ids=["from-zero", "from-state"])
def test_fft_and_step_equal_the_loop_with_gradients(B, T, D, S, carried):
    tensors = inputs(B, T, D, S)
    ref = [t.clone().requires_grad_() for t in tensors]
    fft = [t.clone().requires_grad_() for t in tensors]
    y_ref, s_ref = modal_ref(*ref[:3], ref[3] if carried else None)
    y_fft, s_fft = modal_fft(*fft[:3], fft[3] if carried else None)
    assert_close("y", y_ref, y_fft, 1e-5)
    assert_close("s_T", s_ref, s_fft, 1e-5)
    dy, ds = torch.randn_like(y_ref), torch.randn_like(s_ref)
    ((y_ref * dy).sum() + (s_ref * ds).sum()).backward()
    ((y_fft * dy).sum() + (s_fft * ds).sum()).backward()
    for name, a, b in zip(["u", "log_poles", "residues", "s0"], ref, fft):
        if a.grad is not None:
            assert_close(f"d{name}", a.grad, b.grad, 1e-5)
    u, log_poles, residues, s0 = tensors
    s = s0 if carried else torch.zeros(B, D, S)
    steps = []
    for t in range(T):
        y, s = modal_step(u[:, t], log_poles, residues, s)
        steps.append(y)
    assert_close("step", y_ref.detach(), torch.stack(steps, 1), 1e-5)


def test_decode_state_does_not_grow_with_context():
    model = registry.build("striped-hyena", "tiny", device="meta")
    hyena, attention = model.layers[0], model.layers[1]
    assert hyena.state_bytes(1, 1 << 20, torch.bfloat16) == hyena.state_bytes(1, 16, torch.bfloat16)
    assert attention.state_bytes(1, 1 << 20, torch.bfloat16) > attention.state_bytes(1, 16, torch.bfloat16)
