"""The composition layer: the shared causal convolution against its plain definition, and one-line
errors for malformed layer patterns."""

import pytest
import torch

from altbench.errors import UserError
from altbench.models.blocks import CausalConv1d
from altbench.models.compose import check_pattern
from conftest import assert_close


def causal_conv_ref(x, weight, bias):
    """y_t = b + sum_k w_k x_{t-K+1+k}, zeros before the start; x: (B, T, C), weight: (C, 1, K)."""
    K = weight.shape[-1]
    y = []
    for t in range(x.shape[1]):
        acc = bias.clone().expand(x.shape[0], -1)
        for k in range(K):
            s = t - K + 1 + k
            if s >= 0:
                acc = acc + weight[:, 0, k] * x[:, s]
        y.append(acc)
    return torch.stack(y, 1)


def test_causal_conv_forward_segments_and_step_agree_with_the_definition():
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4)
    x = torch.randn(2, 11, 6)
    with torch.no_grad():
        expected = causal_conv_ref(x, conv.weight, conv.bias)
        full, _ = conv(x, None)
        first, window = conv(x[:, :5], None)
        second, _ = conv(x[:, 5:], window)
        steps, w = [], conv.init_state(2)
        for t in range(11):
            y, w = conv.step(x[:, t], w)
            steps.append(y)
    assert_close("forward", expected, full, 1e-6)
    assert_close("segments", expected, torch.cat([first, second], 1), 1e-6)
    assert_close("step", expected, torch.stack(steps, 1), 1e-6)


@pytest.mark.parametrize(
    "pattern, n_layers, message",
    [
        ("MMAX", 4, r"pattern 'MMAX': unknown mixer letter 'X'; known letters: M, A"),
        ("MMA", 4, r"pattern 'MMA' has 3 letters but n_layers is 4; give one letter per layer"),
    ],
    ids=["unknown-letter", "wrong-length"],
)
def test_malformed_pattern_is_one_line(pattern, n_layers, message):
    with pytest.raises(UserError, match=message):
        check_pattern(pattern, n_layers, "MA")


def test_jamba_pattern_of_the_wrong_length_is_one_line():
    from altbench import registry

    with pytest.raises(UserError, match=r"pattern 'MMMMAMMM' has 8 letters but n_layers is 7"):
        registry.config("jamba", "tiny", n_layers=7)


def test_fused_linear_is_its_pieces_as_separate_linears_in_init_output_and_checkpoints():
    from torch import nn

    from altbench.models.blocks import FusedLinear

    class Separate(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj = nn.Linear(8, 6), nn.Linear(8, 4)
            self.o_proj = nn.Linear(10, 8)

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            FusedLinear(8, {"q_proj": 6, "k_proj": 4}, bias=True).attach(self, "qk_proj")
            self.o_proj = nn.Linear(10, 8)

    torch.manual_seed(3)
    separate = Separate()
    torch.manual_seed(3)
    fused = Fused()
    assert list(fused.state_dict()) == list(separate.state_dict())  # names and order of the separate Linears
    for name, tensor in separate.state_dict().items():
        assert torch.equal(fused.state_dict()[name], tensor), name  # seeded values, drawn in the same order
    x = torch.randn(3, 8)
    q, k = fused.qk_proj(x)
    assert torch.equal(q, separate.q_proj(x)) and torch.equal(k, separate.k_proj(x))

    separate.k_proj.bias.data += 1
    fused.load_state_dict(separate.state_dict())  # strict: every name accounted for
    assert torch.equal(fused.qk_proj(x)[1], separate.k_proj(x))
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in separate.parameters())


def test_fused_linear_with_some_pieces_biased_keeps_their_init_names_and_outputs():
    from torch import nn

    from altbench.models.blocks import FusedLinear

    class Separate(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.i = nn.Linear(8, 6, bias=False), nn.Linear(8, 2)
            self.k, self.f = nn.Linear(8, 6, bias=False), nn.Linear(8, 2)

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            FusedLinear(8, {"q": 6, "i": 2, "k": 6, "f": 2}, bias=("i", "f")).attach(self, "proj")

    torch.manual_seed(5)
    separate = Separate()
    torch.manual_seed(5)
    fused = Fused()
    assert list(fused.state_dict()) == ["q.weight", "i.weight", "i.bias", "k.weight", "f.weight", "f.bias"]
    for name, tensor in separate.state_dict().items():
        assert torch.equal(fused.state_dict()[name], tensor), name
    x = torch.randn(3, 8)
    expected = [m(x) for m in (separate.q, separate.i, separate.k, separate.f)]
    for got in (fused.proj(x), fused.proj.separately(x)):
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(g, e) for g, e in zip(fused.proj.separately(x), expected))  # the Linears' own rounding
    separate.f.bias.data += 1
    fused.load_state_dict(separate.state_dict())
    assert torch.equal(fused.proj.biases()["f"], separate.f.bias)


def test_fused_linear_per_piece_maps_each_input_by_its_own_piece():
    from altbench.models.blocks import FusedLinear

    torch.manual_seed(0)
    fused = FusedLinear(8, {"r": 5, "k": 5, "v": 5}, bias=False)
    xs = torch.randn(3, 2, 4, 8)  # (pieces, B, T, d_in)
    ys = fused.per_piece(xs)
    assert ys.shape == (3, 2, 4, 5)
    for i, w in enumerate(fused.weight.split(5)):
        torch.testing.assert_close(ys[i], torch.nn.functional.linear(xs[i], w), rtol=1e-6, atol=1e-6)
