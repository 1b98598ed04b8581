"""TTT-Linear and TTT-MLP (models/ttt.py). The forms agree where the math says they must, in fp64:
the token loop (gradient by autograd) and the mini-batch form (dual and primal) and the step at every
inner batch b, outputs, final states and gradients; the online loop (b = 1) differs from b > 1; a
sequence split anywhere (inside a mini-batch too) gives what one call gives; the state is f's weights,
their open mini-batch gradient sum and a position, of exactly `state_bytes`; the paper's sizes have
its parameter counts, and the 130m is matched to the transformer's."""

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models.base import state_nbytes
from altbench.models.ttt import TTTConfig, ttt_mini_batch, ttt_ref, ttt_step
from conftest import assert_close

RTOL = 1e-10  # fp64 throughout the functional tests
INNER_WIDTH = {"linear": [(4, 4)], "mlp": [(4, 16), (16, 4)]}  # (in, out) per layer of g at F = 4


def ttt_steps(q, k, v, lr, scale, ln_weight, ln_bias, state, mini_batch):
    """`ttt_step` over every token, with the forms' signature."""
    outputs = []
    for t in range(q.shape[1]):
        z, state = ttt_step(q[:, t], k[:, t], v[:, t], lr[:, t], scale, ln_weight, ln_bias, state, mini_batch)
        outputs.append(z)
    return torch.stack(outputs, 1), state


FORMS = {
    "dual": lambda *a, mini_batch: ttt_mini_batch(*a, mini_batch=mini_batch),
    "primal": lambda *a, mini_batch: ttt_mini_batch(*a, mini_batch=mini_batch, dual=False),
    "step": lambda *a, mini_batch: ttt_steps(*a, mini_batch),
}


def inputs(inner, B=2, T=11, H=2, F=4, b=4, open_tokens=0, seed=0):
    """q, k, v, lr, s, LN weight and bias, and a state `open_tokens` into a mini-batch (random W_0 and
    A), in fp64, the leaves requiring grad. Weights and learning rates are large enough that learning moves
    the outputs far (checked in `test_learning_changes_the_outputs`)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, F, generator=g, dtype=torch.float64) for _ in range(3))
    lr = 0.2 + 0.8 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    scale = 1 / torch.arange(1.0, b + 1, dtype=torch.float64) + 0.1 * torch.rand(b, generator=g, dtype=torch.float64)
    ln_weight = 1 + 0.2 * torch.randn(H, F, generator=g, dtype=torch.float64)
    ln_bias = 0.2 * torch.randn(H, F, generator=g, dtype=torch.float64)
    weights, acc = [], []
    for n_in, n_out in INNER_WIDTH[inner]:
        for shape in ((B, H, n_in, n_out), (B, H, n_out)):
            weights.append(0.5 * torch.randn(*shape, generator=g, dtype=torch.float64))
            acc.append(0.1 * torch.randn(*shape, generator=g, dtype=torch.float64) * bool(open_tokens))
    leaves = [q, k, v, lr, scale, ln_weight, ln_bias, *weights, *(acc if open_tokens else [])]  # A = 0 at i = 0
    for t in leaves:
        t.requires_grad_()
    state = (tuple(weights), tuple(acc), open_tokens)
    return (q, k, v, lr, scale, ln_weight, ln_bias, state), leaves


def case_id(inner, b, open_tokens):
    return f"{inner}-b{b}-open{open_tokens}"


CASES = [("linear", 1, 0), ("linear", 4, 0), ("linear", 4, 3), ("mlp", 1, 0), ("mlp", 4, 2)]


@pytest.mark.parametrize("inner, b, open_tokens", CASES, ids=[case_id(*c) for c in CASES])
@pytest.mark.parametrize("form", FORMS)
def test_form_equals_the_token_loop(form, inner, b, open_tokens):
    """Outputs, final state (W_0, A, position) and every gradient, through one weighted sum of both."""
    args, leaves = inputs(inner, b=b, open_tokens=open_tokens)
    z_ref, (W_ref, A_ref, i_ref) = ttt_ref(*args, mini_batch=b)
    z, (W, A, i) = FORMS[form](*args, mini_batch=b)
    assert i == i_ref == (open_tokens + 11) % b
    assert_close(f"{form} output", z_ref, z, RTOL)
    for l, (r, o) in enumerate(zip(W_ref + A_ref, W + A)):
        assert_close(f"{form} state {l}", r, o, RTOL) if r.abs().max() > 0 else torch.testing.assert_close(o, r)

    g = torch.Generator().manual_seed(1)
    probes = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (z, *W)]
    loss_ref = sum((p * t).sum() for p, t in zip(probes, (z_ref, *W_ref)))
    loss = sum((p * t).sum() for p, t in zip(probes, (z, *W)))
    grads_ref = torch.autograd.grad(loss_ref, leaves, allow_unused=True)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    names = ["dq", "dk", "dv", "dlr", "dscale", "dln_weight", "dln_bias"] + [f"dstate{l}" for l in range(len(leaves) - 7)]
    for name, r, o in zip(names, grads_ref, grads):
        if r is None or not r.abs().max() > 0:  # A of a closed mini-batch and unused s_i have no gradient
            assert o is None or not o.abs().max() > 0, name
        else:
            assert_close(f"{form} {name}", r, o, RTOL)


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_mini_batch_differs_from_the_online_loop(inner):
    """Only at b = 1 is the mini-batch form the per-token loop: at b = 4 gradients are taken at W_0."""
    args, _ = inputs(inner, b=4)
    online, _ = ttt_ref(*args[:4], args[4][:1], *args[5:], mini_batch=1)
    batched, _ = ttt_mini_batch(*args, mini_batch=4)
    assert ((online - batched).norm() / online.norm()).item() > 1e-2


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_learning_changes_the_outputs(inner):
    """The inputs above are not a regime where the update is negligible (which would let a wrong update pass)."""
    args, _ = inputs(inner, b=4)
    learned, _ = ttt_mini_batch(*args, mini_batch=4)
    frozen, _ = ttt_mini_batch(*args[:3], torch.zeros_like(args[3]), *args[4:], mini_batch=4)
    assert ((learned - frozen).norm() / frozen.norm()).item() > 0.1


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_segments_carry_an_open_mini_batch(inner):
    """Segments of 5, 1, 3, 2 tokens with b = 4 start and end inside mini-batches: the same as one call."""
    args, _ = inputs(inner, b=4)
    q, k, v, lr, scale, ln_weight, ln_bias, state = args
    whole, (W, A, i) = ttt_mini_batch(*args, mini_batch=4)
    parts, start = [], 0
    for n in (5, 1, 3, 2):
        part = slice(start, start + n)
        z, state = ttt_mini_batch(q[:, part], k[:, part], v[:, part], lr[:, part], scale, ln_weight, ln_bias, state,
                                  mini_batch=4)
        parts.append(z)
        start += n
    assert state[2] == i == 3
    assert_close("segmented output", whole, torch.cat(parts, 1), RTOL)
    for r, o in zip(W + A, state[0] + state[1]):
        assert_close("segmented state", r, o, RTOL)


def tiny(arch, **overrides):
    torch.manual_seed(0)
    return registry.build(arch, "tiny", dtype=torch.float32, **overrides).eval()


@pytest.mark.parametrize("arch", ["ttt-linear", "ttt-mlp"])
def test_model_prefill_then_steps_equals_forward_at_the_paper_mini_batch(arch):
    """b = 16 (tiny's): a prefill of 21 tokens leaves a mini-batch 5 tokens open; 14 steps close it and open the next."""
    model = tiny(arch)
    x = torch.randint(0, 256, (2, 35), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(x)
        _, state = model(x[:, :21])
        assert [s[2] for s in state] == [5, 5]
        steps = []
        for t in range(21, 35):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
    assert [s[2] for s in state] == [3, 3]
    assert_close(f"{arch} prefill + steps", full[:, 21:], torch.stack(steps, 1), 1e-5)


@pytest.mark.parametrize("arch", ["ttt-linear", "ttt-mlp"])
def test_state_is_f_weights_their_open_gradient_sum_and_a_position(arch):
    model = tiny(arch).to(torch.bfloat16)
    x = torch.randint(0, 256, (3, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = model(x)
        _, stepped = model.step(x[:, 0], model.init_state(3))
    mixer = model.layers[0].mixer
    shapes = [(3, 4, n_in, n_out) for n_in, n_out in mixer.inner_shapes]
    for weights, acc, i in [*state, *stepped]:
        assert [tuple(w.shape) for w in weights[::2]] == [tuple(a.shape) for a in acc[::2]] == shapes
        assert all(t.dtype == torch.float32 for t in weights + acc) and isinstance(i, int)
    assert state[0][2] == 19 % 16 and stepped[0][2] == 1
    per_head = {"ttt-linear": 16 * 16 + 16, "ttt-mlp": 2 * 16 * 64 + 64 + 16}[arch]
    assert model.state_bytes(3, 19, torch.bfloat16) == 2 * 3 * 4 * 2 * per_head * 4 == state_nbytes(state)
    assert state_nbytes(stepped) == model.state_bytes(3, 1, torch.bfloat16)


def test_step_and_forward_trace_without_graph_breaks():
    """torch.compile (fullgraph: no .item(), no branch on a tensor's value) traces both calls of
    TTT-MLP (TTT-Linear runs a subset of its code)."""
    torch._dynamo.reset()
    mixer = tiny("ttt-mlp").layers[0].mixer
    x = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y, state = torch.compile(mixer.forward, backend="eager", fullgraph=True)(x, None)
        y1, _ = torch.compile(mixer.step, backend="eager", fullgraph=True)(x[:, 0], state)
        expected, _ = mixer.step(x[:, 0], state)
    assert_close("compiled step", expected, y1, 1e-6)


def test_learning_rate_gate_and_token_scale_are_the_papers():
    mixer = tiny("ttt-linear").layers[0].mixer
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(5))
    expected = 1.0 * torch.sigmoid(x @ mixer.lr_weight.T + mixer.lr_bias) / 16  # base_lr sigmoid(.) / F
    assert_close("lr", expected, mixer.learning_rate(x), 1e-6)
    assert torch.equal(mixer.token_scale(), 1 / torch.arange(1.0, 17))  # delta = 0 at init
    with torch.no_grad():
        mixer.scale_offset[:2] = torch.tensor([0.5, -1.0])
    assert mixer.token_scale()[:2].tolist() == [1.5, 0.0]  # s_i = max(1/(i+1) + delta_i, 0)


# Sun et al. 2024, appendix C: 125M, 350M, 760M, 1.3B. With the Llama 2 vocabulary (32000) and tied
# embeddings, "125m" (GPT-3's 125M had 50257 tokens) comes to 110M / 114M; the others within 5%.
PUBLISHED = {"125m": (125e6, 0.13), "350m": (350e6, 0.05), "760m": (760e6, 0.05), "1.3b": (1.3e9, 0.05)}


@pytest.mark.parametrize("arch", ["ttt-linear", "ttt-mlp"])
@pytest.mark.parametrize("size", PUBLISHED)
def test_param_counts_of_the_papers_sizes(arch, size):
    nominal, tolerance = PUBLISHED[size]
    model = registry.build(arch, size, device="meta")
    assert model.params() == sum(p.numel() for p in model.parameters())
    assert abs(model.params() / nominal - 1) < tolerance, f"{size}: {model.params() / 1e6:.1f}M"


def test_130m_is_matched_to_the_transformer_130m():
    theirs = registry.param_count("transformer", "130m")
    assert registry.param_count("ttt-linear", "130m") == 131_393_616
    for arch in ("ttt-linear", "ttt-mlp"):
        assert abs(registry.param_count(arch, "130m") / theirs - 1) < 0.01, arch


def test_ttt_mlp_state_and_flops_exceed_ttt_linear():
    """f of TTT-MLP holds 8 F^2 + 5 F per head to TTT-Linear's F^2 + F; its dual form costs more per token."""
    linear, mlp = (registry.build(a, "130m", device="meta") for a in ("ttt-linear", "ttt-mlp"))
    F = 64
    assert linear.state_bytes(1, 0) == 12 * 12 * 2 * (F * F + F) * 4
    assert mlp.state_bytes(1, 0) == 12 * 12 * 2 * (8 * F * F + 5 * F) * 4
    inner_linear = 12 * (6 * F * F + 2 * 16 * 2 * F)
    assert linear.layers[0].mixer.flops_per_token(0) == 4 * 2 * 768 * 768 + 2 * 768 * 12 + inner_linear


def test_an_unknown_inner_model_is_one_line():
    with pytest.raises(UserError, match="ttt inner = 'conv'.*linear, mlp"):
        TTTConfig(inner="conv")
