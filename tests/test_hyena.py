"""Hyena: the FFT and step forms equal the paper's recurrence, the model continues a sequence from
its state (segments, decode), it is causal, and its sizes have the stated parameter counts."""

import pytest
import torch

from altbench import registry
from altbench.models.base import state_nbytes
from altbench.models.hyena import hyena_fft, hyena_ref, hyena_step
from conftest import assert_close

RTOL = 1e-5  # fp32 throughout


def op_inputs(B, S, T, N=2, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, T, D, generator=g)
    x = torch.randn(B, T, N, D, generator=g)
    h = torch.randn(S + T, N, D, generator=g) * torch.exp(-0.1 * torch.arange(S + T))[:, None, None]
    bias = torch.randn(N, D, generator=g)
    z = torch.randn(B, S, N, D, generator=g) if S else None
    return v, x, h, bias, z


CASES = [(2, 0, 33), (2, 21, 16), (1, 5, 1), (3, 0, 64)]


@pytest.mark.parametrize("B, S, T", CASES, ids=[f"B{b}-S{s}-T{t}" for b, s, t in CASES])
def test_fft_and_step_equal_the_recurrence(B, S, T):
    v, x, h, bias, z = op_inputs(B, S, T, seed=T)
    y_ref, z_ref = hyena_ref(v, x, h, bias, z)
    y, z_fft = hyena_fft(v, x, h, bias, z)
    assert z_ref.shape == (B, S + T, 2, 6)
    assert_close("fft y", y_ref, y, RTOL)
    assert_close("fft z", z_ref, z_fft, RTOL)
    history, ys = z if z is not None else v.new_zeros(B, 0, 2, 6), []
    for t in range(T):
        aligned = h[: S + t + 1].flip(0)  # h(S + t) .. h(0)
        y_t, z_t = hyena_step(v[:, t], x[:, t], aligned, bias, history)
        history = torch.cat([history, z_t[:, None]], dim=1)
        ys.append(y_t)
    assert_close("step y", y_ref, torch.stack(ys, 1), RTOL)
    assert_close("step z", z_ref, history, RTOL)


def tiny():
    torch.manual_seed(0)
    return registry.build("hyena", "tiny", dtype=torch.float32).eval()


def ids(T, B=2, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("split", [(40, 24), (1, 63), (63, 1)], ids=["40+24", "1+63", "63+1"])
def test_two_segments_with_state_equal_one_forward(split):
    model, x = tiny(), ids(64)
    with torch.no_grad():
        full, full_state = model(x)
        first, state = model(x[:, : split[0]])
        second, state = model(x[:, split[0] :], state)
    assert_close("logits", full, torch.cat([first, second], 1), RTOL)
    for a, b in zip(full_state, state):
        for name, u, w in zip(("window", "history", "taps"), a.tensors(), b.tensors()):
            assert_close(name, u, w, RTOL)


def test_decode_steps_equal_forward_and_state_grows_like_a_kv_cache():
    model, x = tiny(), ids(30, B=3)
    with torch.no_grad():
        full, _ = model(x)
        _, state = model(x[:, :10])
        steps = []
        for t in range(10, 30):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
    assert_close("step logits", full[:, 10:], torch.stack(steps, 1), RTOL)
    assert state_nbytes(state) == model.state_bytes(3, 30, torch.float32)
    # per layer: window 3 x 2 x 192 x 4 B; history 3 x 30 x 2 x 64 x 4 B; taps 30 x 2 x 64 x 4 B
    assert model.state_bytes(3, 30, torch.float32) == 2 * (4608 + 46080 + 15360)
    assert model.state_bytes(1, 2000) - model.state_bytes(1, 1000) == 2 * 1000 * 2 * 64 * 2 * 2  # bf16, B + 1 = 2


def test_changing_a_later_token_leaves_earlier_outputs_unchanged():
    model, x = tiny(), ids(48)
    y = x.clone()
    y[:, 30] = (y[:, 30] + 1) % 256
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert_close("before the change", a[:, :30], b[:, :30], 1e-6)
    changed = ((a[:, 30:] - b[:, 30:]).norm(dim=-1) / a[:, 30:].norm(dim=-1)).min().item()
    assert changed > 1e-3  # every later position sees the change (long filter, not a window)


def test_filter_is_defined_at_any_position_and_decays():
    f = tiny().layers[0].mixer.filter
    with torch.no_grad():
        whole = f(0, 40)  # (40, 2, 64)
        assert_close("filter in pieces", whole, torch.cat([f(0, 17), f(17, 23)]), 1e-6)
        far = f(10**6, 3)  # t / l_max ~ 3900: every channel's window has decayed to 0
    assert whole.shape == (40, 2, 64) and torch.isfinite(far).all()
    assert far.abs().max().item() == 0.0
    assert whole[0].abs().max().item() > 0.1


def test_fill_random_extends_the_history_for_decode_timing():
    model = tiny()
    with torch.no_grad():
        _, state = model(ids(5), model.init_state(2, capacity=8))
        for cache in state:
            cache.fill_random(100, headroom=4)
        logits, state = model.step(ids(1)[:, 0], state)
    assert [c.length for c in state] == [101, 101] and all(c.capacity == 104 for c in state)
    assert state_nbytes(state) == model.state_bytes(2, 101, torch.float32)
    assert torch.isfinite(logits).all()


def test_sizes_have_the_stated_parameter_counts():
    model = tiny()
    assert model.params() == sum(p.numel() for p in model.parameters()) == 118_592
    assert registry.param_count("hyena", "130m") == 130_673_088
    # the paper's Hyena-153M shape: width 864, depth 18, MLP 1728, GPT-2 vocabulary padded to 50264
    hyena_153m = registry.build("hyena", "130m", device="meta", d_model=864, n_layers=18, vocab_size=50264)
    assert hyena_153m.params() == 153_462_816


def test_prefill_flops_follow_the_fft_formula():
    model = tiny()
    mixer = model.layers[0].mixer
    # L = 1024: n = 2048, per long convolution and channel 7.5 n log2 n + 6 (n/2 + 1) FLOPs
    fft = 2 * 64 * (7.5 * 2048 * 11 + 6 * 1025)
    per_token = mixer._dense_flops()  # projections, short conv, gates and the filter at one position
    assert mixer.prefill_flops(1024) == 1024 * per_token + int(fft)
    # a prefill grows as L log L, a decode step linearly in the context
    assert model.prefill_flops(2048) / model.prefill_flops(1024) < 2.2
    assert model.flops_per_token(65536) > 30 * model.flops_per_token(1024)
