"""The model contract (models/base.py), checked for every registered architecture at `tiny`:
chunked forward == forward with carried state over segments == token-by-token `step`, and the
analytic `params` / `state_bytes` equal what the real tensors hold. A check of a capability an
architecture does not declare (a bidirectional model has no step and no carried state) is skipped."""

import pytest
import torch

from altbench import registry
from altbench.models.base import CAUSAL_STEP, SEGMENTED_PREFILL, state_nbytes
from conftest import assert_close

ARCHS = list(registry.ARCHITECTURES)
RTOL = 1e-5  # fp32 throughout


def tiny(arch, *needs: str):
    """The tiny model, or a skip when it lacks one of the capabilities `needs`."""
    torch.manual_seed(0)
    model = registry.build(arch, "tiny", dtype=torch.float32).eval()
    lacking = [n for n in needs if n not in model.capabilities]
    if lacking:
        pytest.skip(f"{arch} has no {', '.join(lacking)}")
    return model


def ids(model, T=37, B=2):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


@pytest.mark.parametrize("arch", ARCHS)
def test_segmented_forward_equals_one_forward(arch):
    model, x = tiny(arch, SEGMENTED_PREFILL), None
    x = ids(model)
    with torch.no_grad():
        full, _ = model(x)
        state, parts = None, []
        for segment in x.split([16, 1, 13, 7], dim=1):
            logits, state = model(segment, state)
            parts.append(logits)
    assert_close(f"{arch} segmented", full, torch.cat(parts, 1), RTOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_step_equals_forward(arch):
    model = tiny(arch, CAUSAL_STEP)
    x = ids(model, T=21)
    with torch.no_grad():
        full, _ = model(x)
        state, steps = model.init_state(x.shape[0]), []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
    assert_close(f"{arch} step", full, torch.stack(steps, 1), RTOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_step_continues_a_prefill(arch):
    model = tiny(arch, CAUSAL_STEP)
    x = ids(model, T=24)
    with torch.no_grad():
        full, _ = model(x)
        _, state = model(x[:, :20])
        steps = []
        for t in range(20, 24):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
    assert_close(f"{arch} prefill+step", full[:, 20:], torch.stack(steps, 1), RTOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_analytic_params_and_state_bytes(arch):
    model = tiny(arch)
    assert model.params() == sum(p.numel() for p in model.parameters())
    x = ids(model, T=19, B=3)
    with torch.no_grad():
        _, state = model(x)
    assert model.state_bytes(3, 19, torch.float32) == state_nbytes(state)


@pytest.mark.parametrize("arch", ARCHS)
def test_flops_are_positive_and_non_decreasing_in_context(arch):
    model = tiny(arch)
    f1, f2 = model.flops_per_token(1024), model.flops_per_token(65536)
    assert model.params() < f1 <= f2  # ~2 FLOPs per weight used, embedding lookup aside


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_from_init_state_equals_forward_from_none(arch):
    model = tiny(arch, SEGMENTED_PREFILL)
    x = ids(model, T=19)
    with torch.no_grad():
        expected, _ = model(x)
        got, _ = model(x, model.init_state(x.shape[0], capacity=32))
    assert_close(f"{arch} init_state", expected, got, RTOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_last_only_gives_the_last_position_logits(arch):
    model = tiny(arch)
    x = ids(model, T=13)
    with torch.no_grad():
        full, _ = model(x)
        last, _ = model(x, last_only=True)
    assert last.shape == (x.shape[0], 1, model.config.vocab_size)
    assert_close(f"{arch} last_only", full[:, -1:], last, RTOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_mix_is_the_first_layers_mixer_with_carried_state(arch):
    """`block.mix` (the `kernel` measurement) runs the mixer alone, and continues with its state."""
    model = tiny(arch, SEGMENTED_PREFILL)
    x = torch.randn(2, 21, model.config.d_model, generator=torch.Generator().manual_seed(5))
    block = model.layers[0]
    with torch.no_grad():
        full, _ = block.mix(x, None)
        first, state = block.mix(x[:, :9], None)
        second, _ = block.mix(x[:, 9:], state)
    assert full.shape == x.shape
    assert_close(f"{arch} mix", full, torch.cat([first, second], 1), RTOL)
