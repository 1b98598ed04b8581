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
