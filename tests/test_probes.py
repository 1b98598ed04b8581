"""Synthetic probes: each generator builds the task its paper describes (checked token by token),
the data is a pure function of its seed, and the trainer teaches the `tiny` models the easiest
setting well above chance on held-out seeds, returning complete store rows."""

import math

import pytest
import torch

from altbench.errors import UserError
from altbench.probes import TASKS, ProbeSettings, run_probe
from altbench.probes.tasks import BLANK, FIRST_CONTENT, SEP, copying, induction_heads, mqar, selective_copying
from altbench.probes.trainer import TrainingDiverged, lr_factor, training_batches


@pytest.fixture
def one_thread():
    """Two shared cores: one thread avoids oversubscription (training is ~10x slower otherwise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_distinct_draws_are_the_first_k_of_a_random_permutation():
    from altbench.probes.tasks import _distinct

    fast = _distinct(64, 1, 4096, 16, torch.Generator().manual_seed(5))
    by_sort = torch.rand(64, 4095, generator=torch.Generator().manual_seed(5)).argsort(dim=1)[:, :16] + 1
    assert torch.equal(fast, by_sort)  # the same batches as the full argsort earlier runs used


def test_mqar_recalls_each_key_once_from_disjoint_halves():
    V, T, D = 64, 48, 6
    x, y, m = mqar(V, T, batch=32, seed=3, num_kv_pairs=D)
    assert x.shape == y.shape == m.shape == (32, T)
    assert (m.sum(1) == D).all()
    for b in range(32):
        keys, values = x[b, 0 : 2 * D : 2], x[b, 1 : 2 * D : 2]
        assert ((1 <= keys) & (keys < V // 2)).all() and ((V // 2 <= values) & (values < V)).all()
        assert len(set(keys.tolist())) == D
        q = m[b].nonzero()[:, 0]
        assert (q >= 2 * D).all() and (q % 2 == 0).all()  # queries on the even slots after the pairs
        pairs = dict(zip(keys.tolist(), values.tolist()))
        assert sorted(x[b, q].tolist()) == sorted(keys.tolist())  # every key queried once
        assert all(pairs[k] == v for k, v in zip(x[b, q].tolist(), y[b, q].tolist()))


def test_mqar_query_gaps_follow_a_power_law():
    V, T, D = 64, 256, 2
    _, _, m = mqar(V, T, batch=2000, seed=0, num_kv_pairs=D)
    slot = (m.nonzero()[:, 1] - 2 * D) // 2  # 0-based slot of every query
    counts = torch.bincount(slot, minlength=(T - 2 * D) // 2).double()
    # p(s) ~ s^(a - 1) with a = 0.01: slot 1 about 2x slot 2, about 10x slot 10
    assert counts[0] / counts[1] == pytest.approx(2 ** 0.99, rel=0.25)
    assert counts[0] / counts[9] == pytest.approx(10 ** 0.99, rel=0.35)


@pytest.mark.parametrize("scattered", [False, True], ids=["copying", "selective"])
def test_copying_reproduces_the_tokens_after_the_separator(scattered):
    V, T, M = 12, 20, 5
    make = selective_copying if scattered else copying
    x, y, m = make(V, T, batch=64, seed=1, num_tokens=M)
    assert (m.sum(1) == M).all() and m[:, T - M :].all()
    assert (x[:, T - M] == SEP).all()
    context, answer = x[:, : T - M], y[:, T - M :]
    assert ((answer >= FIRST_CONTENT) & (answer < V)).all()
    for b in range(64):
        tokens = context[b][context[b] != BLANK]
        assert tokens.tolist() == answer[b].tolist()  # in order, nothing else in the context
        assert x[b, T - M + 1 :].tolist() == answer[b, :-1].tolist()  # teacher forcing
    positions = {tuple((context[b] != BLANK).nonzero()[:, 0].tolist()) for b in range(64)}
    assert (len(positions) > 32) if scattered else (positions == {tuple(range(M))})


def test_induction_heads_asks_for_the_token_after_the_trigger():
    V, T = 10, 30
    x, y, m = induction_heads(V, T, batch=64, seed=2)
    assert (m.sum(1) == 1).all() and m[:, -1].all()
    assert (x[:, -1] == SEP).all() and ((x == SEP).sum(1) == 2).all()
    first = (x == SEP).int().argmax(1)  # the trigger inside the sequence
    assert (y[:, -1] == x[torch.arange(64), first + 1]).all()
    assert (first + 1 < T - 1).all()


@pytest.mark.parametrize("task", list(TASKS))
def test_batches_are_a_function_of_the_seed(task):
    probe = TASKS[task]
    axes = {**probe.axes, "seq_len": 32 if task != "sudoku" else 16}  # sudoku: 16 cells, a 4x4 grid
    a, b, c = (probe.make(16 if task != "mqar" else 64, batch=4, seed=s, **axes) for s in (5, 5, 6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_lr_warms_up_then_decays_to_zero():
    assert [lr_factor(i, 100, 10) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [lr_factor(i, 100, 10) for i in (10, 55, 100)] == pytest.approx([1.0, 0.5, 0.0])


def test_settings_grid_budget_and_typos():
    s = ProbeSettings.from_dict("mqar", {"seq_len": [32, 64], "num_kv_pairs": 4, "batch": 8, "tokens": 4800})
    assert s.points == [{"seq_len": 32, "num_kv_pairs": 4}, {"seq_len": 64, "num_kv_pairs": 4}]
    assert (s.vocab, s.steps) == (8192, 13)  # ceil(4800 / (8 x mean length 48))
    s = ProbeSettings.from_dict("copying", {"points": [{"num_tokens": 4}], "vocab": 10})
    assert (s.points, s.vocab) == ([{"seq_len": 64, "num_tokens": 4}], 10)
    with pytest.raises(UserError, match="unknown setting.*num_kv_pair"):
        ProbeSettings.from_dict("mqar", {"num_kv_pair": 4})
    with pytest.raises(UserError, match="each point sets only"):
        ProbeSettings.from_dict("mqar", {"points": [{"seq_len": 64, "kv_pairs": 4}]})
    with pytest.raises(UserError, match="unknown probe 'mqr'"):
        ProbeSettings.from_dict("mqr", {})
    with pytest.raises(UserError, match="mqar: 20 pairs need"):
        mqar(64, 32, batch=1, seed=0, num_kv_pairs=20)


def test_test_seq_len_adds_untrained_lengths_per_trained_point():
    s = ProbeSettings.from_dict("mqar", {"seq_len": [32, 64], "num_kv_pairs": [2, 4], "test_seq_len": [64, 128]})
    assert s.test_points() == [
        ({"seq_len": 32, "num_kv_pairs": 2}, 32), ({"seq_len": 32, "num_kv_pairs": 4}, 32),
        ({"seq_len": 64, "num_kv_pairs": 2}, 64), ({"seq_len": 64, "num_kv_pairs": 4}, 64),
        ({"seq_len": 128, "num_kv_pairs": 2}, 64), ({"seq_len": 128, "num_kv_pairs": 4}, 64),
    ]
    with pytest.raises(UserError, match="test_seq_len must be a list of positive lengths"):
        ProbeSettings.from_dict("induction_heads", {"test_seq_len": 1024})


def test_untrained_lengths_are_scored_but_never_trained_on(one_thread):
    settings = dict(seq_len=16, vocab=10, steps=3, batch=4, test_examples=8, test_seq_len=[64])
    rows = run_probe("transformer", "tiny", "induction_heads", "cpu", settings)
    assert [(r["seq_len"], r["train_seq_len"], r["n_scored"]) for r in rows] == [(16, 16, 8), (64, 16, 8)]
    plain = run_probe("transformer", "tiny", "induction_heads", "cpu", dict(settings, test_seq_len=[]))
    assert plain[0]["curve"] == rows[0]["curve"] and plain[0]["value"] == rows[0]["value"]


def test_training_batches_cycle_the_points_in_step_order():
    s = ProbeSettings.from_dict("copying", {"seq_len": [8, 12], "num_tokens": 2, "steps": 3, "batch": 2, "vocab": 10})
    got = list(training_batches("copying", s, torch.device("cpu")))
    assert len(got) == 3
    for step, batch in enumerate(got):  # made a step ahead in a thread, still the seed's batch
        want = copying(10, [8, 12][step % 2], batch=2, seed=step, num_tokens=2)
        assert all(torch.equal(a, b) for a, b in zip(batch, want))


# Copying 4 tokens across a gap of 4 (seq_len 8) from 8 content tokens: chance is 1/8. Both tiny
# models reach > 0.85 in 60 steps (the gap is beyond Mamba's width-4 convolution: its SSM carries it).
EASY = dict(seq_len=8, num_tokens=4, vocab=10, steps=60, batch=16, lr=1e-2, test_examples=256)


@pytest.mark.parametrize("arch", ["transformer", "mamba"])
def test_tiny_models_learn_to_copy(arch, one_thread):
    (row,) = run_probe(arch, "tiny", "copying", "cpu", EASY)
    assert row["chance"] == 1 / 8
    assert row["value"] > 4 * row["chance"], row["value"]
    assert row["n_scored"] == 256 * 4
    assert row["stderr"] == pytest.approx(math.sqrt(row["value"] * (1 - row["value"]) / row["n_scored"]))
    assert {k: row[k] for k in ("task", "metric", "seed", "steps", "lr", "vocab", "seq_len", "num_tokens")} == {
        "task": "copying", "metric": "accuracy", "seed": 0, "steps": 60, "lr": 1e-2, "vocab": 10, "seq_len": 8,
        "num_tokens": 4,
    }
    steps, losses = zip(*row["curve"])
    assert steps[0] == 1 and steps[-1] == 60 and len(steps) == 60
    assert losses[-1] < losses[0] / 4  # from ~log(10) at the start


def test_training_is_deterministic_per_seed(one_thread):
    settings = dict(EASY, steps=4, test_examples=32)
    first = run_probe("transformer", "tiny", "copying", "cpu", settings)
    again = run_probe("transformer", "tiny", "copying", "cpu", settings)
    other = run_probe("transformer", "tiny", "copying", "cpu", dict(settings, seed=1))
    assert first == again
    assert first[0]["curve"] != other[0]["curve"]


def test_training_that_turns_nan_stops_with_the_step_and_lr(one_thread):
    settings = dict(EASY, steps=40, log_every=1, lr=1e9)  # an absurd rate blows the weights up within steps
    with pytest.raises(TrainingDiverged) as failure:
        run_probe("transformer", "tiny", "copying", "cpu", settings)
    assert str(failure.value) == "training loss nan at step 3 (last finite 2.3 at step 2; lr 1e+09): lower the probe's lr in the suite"


@pytest.mark.parametrize("task", ["copying", "selective_copying", "induction_heads"])
def test_a_bidirectional_model_is_refused_where_the_answers_are_the_next_inputs(task):
    """LLaDA and HRM read every position: on a task whose targets are the inputs shifted by one,
    each answer is in their input, so an accuracy would be invented."""
    for arch in ("llada", "hrm"):
        with pytest.raises(UserError, match=f"probe {task}: each answer is the next input token"):
            run_probe(arch, "tiny", task, "cpu", {"steps": 1})


def test_a_bidirectional_model_may_take_mqar_whose_answers_are_not_in_the_input(one_thread):
    inputs, targets, mask = mqar(vocab=64, seq_len=32, batch=2, seed=0, num_kv_pairs=4)
    after_query = torch.roll(inputs, -1, dims=1)[mask]
    assert not torch.equal(after_query, targets[mask])  # the value asked for is not the token after its query
    rows = run_probe("hrm", "tiny", "mqar", "cpu", {"steps": 2, "batch": 2, "vocab": 64, "test_examples": 4,
                                                      "points": [{"seq_len": 32, "num_kv_pairs": 4}]})
    assert len(rows) == 1 and 0.0 <= rows[0]["value"] <= 1.0
