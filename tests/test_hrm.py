"""The Hierarchical Reasoning Model (models/hrm.py): its two timescales, the one-step gradient, ACT
halting, the Sudoku probe it is trained on, the `reasoning` measurement, and the refusals of bad
cycles / segments."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from altbench import registry
from altbench.errors import UserError
from altbench.models.hrm import HRM
from altbench.probes import run_probe
from altbench.probes.tasks import SUDOKU_EMPTY, sudoku
from conftest import assert_close

TESTS = Path(__file__).parent


def tiny(**overrides) -> HRM:
    torch.manual_seed(0)
    return registry.build("hrm", "tiny", vocab_size=5, **overrides)


def call_log(model: HRM) -> list[tuple[str, bool]]:
    """Appends ("L" | "H", grad enabled) at every application of the L / H module."""
    log = []
    for name, blocks in (("L", model.low), ("H", model.high)):
        blocks[0].register_forward_hook(lambda m, i, o, name=name: log.append((name, torch.is_grad_enabled())))
    return log


@pytest.mark.parametrize("cycles, steps", [(2, 2), (3, 2), (2, 3)], ids=["N2-T2", "N3-T2", "N2-T3"])
def test_l_updates_every_step_h_once_every_t_steps_and_only_the_last_two_carry_gradient(cycles, steps):
    model = tiny(h_cycles=cycles, l_cycles=steps)
    log = call_log(model)
    model(torch.randint(0, 5, (2, 16)))
    assert "".join(name for name, _ in log) == ("L" * steps + "H") * cycles
    assert [grad for _, grad in log] == [False] * (len(log) - 2) + [True, True]


def test_one_step_gradient_is_the_gradient_of_the_last_l_and_h_update_from_detached_states():
    model = tiny()
    x = torch.randn(2, 16, 64, requires_grad=True)
    h0, l0 = (v.clone().requires_grad_() for v in model.initial_state(x))
    z_h, z_l = model.segment(x, (h0, l0))
    (z_h.square().sum() + z_l.sum()).backward()
    assert h0.grad is None and l0.grad is None  # the initial state only feeds the no-grad updates
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]

    # by hand: N*T - 1 L-updates and N - 1 H-updates without gradient, then one of each with it
    model.zero_grad()
    x2 = x.detach().clone().requires_grad_()
    z_h, z_l = h0.detach(), l0.detach()
    with torch.no_grad():
        for i in range(3):
            z_l = model.l_update(z_l, z_h, x2)
            if i == 1:
                z_h = model.h_update(z_h, z_l)
    z_l = model.l_update(z_l, z_h, x2)
    z_h = model.h_update(z_h, z_l)
    (z_h.square().sum() + z_l.sum()).backward()
    assert_close("x grad", x2.grad, x.grad, 1e-6)
    for i, (ref, p) in enumerate(zip(grads, (p for p in model.parameters() if p.grad is not None))):
        assert_close(f"param {i} grad", p.grad, ref, 1e-6)
    assert len(grads) == sum(1 for p in model.parameters() if p.grad is not None) > 0


def test_state_is_detached_between_segments():
    model = tiny()
    ids = torch.randint(0, 5, (2, 16))
    _, state = model(ids)
    assert not any(s.requires_grad for s in state)
    y, mask = torch.randint(1, 5, (2, 16)), torch.ones(2, 16, dtype=torch.bool)
    loss, act, _ = model.act_step(None, ids, y, mask)
    assert loss.requires_grad and not act.z_h.requires_grad and not act.z_l.requires_grad


def rig(model: HRM, halt: bool) -> HRM:
    """Q says halt (Q_halt 5 > Q_continue -5) or continue, whatever the state."""
    with torch.no_grad():
        model.q_head.weight.zero_()
        model.q_head.bias.copy_(torch.tensor([5.0, -5.0] if halt else [-5.0, 5.0]))
    return model


def test_reasoning_halts_when_q_says_halt_and_runs_every_segment_otherwise():
    ids = torch.randint(0, 5, (3, 16))
    _, used = rig(tiny(), halt=True).reason(ids, segments=4, halt=True)
    assert used.tolist() == [1, 1, 1]
    _, used = rig(tiny(), halt=False).reason(ids, segments=3, halt=True)
    assert used.tolist() == [3, 3, 3]
    _, used = rig(tiny(), halt=True).reason(ids, segments=2)  # no halting: a fixed cost
    assert used.tolist() == [2, 2, 2]


def test_act_training_halts_at_max_segments_and_when_q_says_halt_after_the_explored_minimum():
    ids, y = torch.randint(0, 5, (4, 16)), torch.randint(1, 5, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.bool)
    model = rig(tiny(max_segments=3, explore=0.0), halt=False)
    act, halted = None, []
    for _ in range(4):
        _, act, _ = model.act_step(act, ids, y, mask)
        halted.append((act.steps[0].item(), act.halted[0].item()))
    assert halted == [(1, False), (2, False), (3, True), (1, False)]  # halted at M_max, then a fresh puzzle
    _, act, _ = rig(tiny(explore=0.0), halt=True).act_step(None, ids, y, mask)
    assert act.halted.all()
    torch.manual_seed(1)
    _, act, _ = rig(tiny(explore=1.0), halt=True).act_step(None, ids, y, mask)
    assert not act.halted.any()  # exploring: at least 2 segments before a halt


def test_train_loss_is_one_act_segment_scoring_every_cell_against_its_own_token():
    model = tiny()
    ids = torch.randint(0, 5, (2, 16), generator=torch.Generator().manual_seed(3))
    logits, _ = model(ids)  # one segment from the initial state; Q starts at (-5, -5) whatever the state
    q, unsolved = torch.tensor(-5.0), torch.tensor(0.0)
    expected = (F.cross_entropy(logits.transpose(1, 2), ids)
                + 0.5 * F.binary_cross_entropy_with_logits(q, unsolved)  # Q_halt towards "not solved"
                + 0.5 * F.binary_cross_entropy_with_logits(q, torch.sigmoid(q)))  # Q_continue towards the next Q
    loss = model.train_loss(ids)
    assert_close("train_loss", loss, expected, 1e-6)
    loss.backward()
    assert model.q_head.bias.grad is not None and model.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("segments, cycles, message", [
    (0, 2, "segments must be in 1..4 (max_segments), got 0"),
    (5, 2, "segments must be in 1..4 (max_segments), got 5"),
    (1, 0, "cycles must be >= 1, got 0"),
])
def test_bad_cycles_or_segments_name_the_key(segments, cycles, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny().reason(torch.zeros(1, 16, dtype=torch.long), segments, cycles)


def test_sizes_and_matched_transformer():
    hrm_27m, transformer_27m = registry.param_count("hrm", "27m"), registry.param_count("transformer", "27m")
    assert 27.0e6 < hrm_27m < 27.5e6  # the paper's 27M
    assert abs(transformer_27m / hrm_27m - 1) < 1e-3
    with pytest.raises(UserError, match="hrm: h_cycles must be >= 1, got 0"):
        registry.config("hrm", "tiny", h_cycles=0)


def test_transformer_encoder_sees_every_position():
    torch.manual_seed(0)
    ids = torch.randint(0, 5, (1, 16))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 5
    for causal in (True, False):
        model = registry.build("transformer", "tiny", vocab_size=5, causal=causal)
        first = (model(ids)[0][0, 0] - model(changed)[0][0, 0]).abs().max().item()
        assert (first > 1e-4) == (not causal)


# --- the Sudoku probe ------------------------------------------------------------------------------


def solutions(grid: list[int], n: int, limit: int = 2) -> int:
    """Number of completions of `grid` (0 = blank), counted up to `limit`, by plain backtracking."""
    b = int(n**0.5)
    try:
        cell = grid.index(SUDOKU_EMPTY)
    except ValueError:
        return 1
    r, c = divmod(cell, n)
    used = {grid[r * n + j] for j in range(n)} | {grid[i * n + c] for i in range(n)}
    used |= {grid[(r // b * b + i) * n + c // b * b + j] for i in range(b) for j in range(b)}
    count = 0
    for digit in set(range(1, n + 1)) - used:
        grid[cell] = digit
        count += solutions(grid, n, limit - count)
        grid[cell] = SUDOKU_EMPTY
        if count >= limit:
            break
    return count


@pytest.mark.parametrize("n", [4, 9])
def test_sudoku_puzzles_are_valid_deterministic_and_have_one_solution(n):
    inputs, targets, mask = sudoku(10, n * n, 64, seed=3, blanks=n * n)
    b = int(n**0.5)
    grid = targets.view(-1, n, n)
    boxes = grid.view(-1, b, b, b, b).transpose(2, 3).reshape(-1, n, n)
    for units in (grid, grid.transpose(1, 2), boxes):  # every row, column and box holds 1..n once
        assert (units.sort(-1).values == torch.arange(1, n + 1)).all()
    assert (mask == (inputs == SUDOKU_EMPTY)).all() and (inputs[~mask] == targets[~mask]).all()
    assert mask.sum(1).min() >= (4 if n == 4 else 20)
    for puzzle in inputs[: 64 if n == 4 else 8].tolist():
        assert solutions(puzzle, n) == 1
    again, other = sudoku(10, n * n, 64, seed=3, blanks=n * n), sudoku(10, n * n, 64, seed=4, blanks=n * n)
    assert all(torch.equal(a, b) for a, b in zip(again, (inputs, targets, mask)))
    assert not torch.equal(other[1], targets)
    capped = sudoku(10, n * n, 64, seed=3, blanks=3)[2].sum(1)
    assert (capped == 3).all()
    with pytest.raises(UserError, match="sudoku: seq_len is the number of cells, 16"):
        sudoku(10, 20, 1, seed=0)


@pytest.fixture
def one_thread():
    """Tiny matmuls run faster on one thread than on two (and far faster when the cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trainer_learns_4x4_sudoku_with_hrm(one_thread):
    # 150 steps on a CPU reached 0.61 of the cells and 3% of the puzzles (300 steps: 0.70 and 11%)
    settings = dict(steps=200, lr=3e-3, batch=32, test_examples=256, vocab=5, blanks=6, overrides={"max_segments": 2})
    cells, exact = run_probe("hrm", "tiny", "sudoku", "cpu", settings)
    assert cells["metric"] == "accuracy" and cells["chance"] == 0.25 and 256 * 5 < cells["n_scored"] <= 256 * 6
    assert cells["value"] > 0.5, cells["value"]
    assert exact["metric"] == "exact_accuracy" and exact["n_scored"] == 256
    assert 0.25**6 <= exact["chance"] < 0.25**5 and exact["value"] > 0.01, exact  # a few puzzles got fewer blanks


def test_causal_only_models_are_refused_on_a_grid_probe():
    with pytest.raises(UserError, match="probe sudoku: every answer depends on the whole grid, and mamba"):
        run_probe("mamba", "tiny", "sudoku", "cpu", {"steps": 1})


# --- the reasoning measurement ---------------------------------------------------------------------


SUITE = """name = "reasoning"
archs = ["hrm", "transformer"]
sizes = ["tiny"]
seq_lens = [16]
device = "cpu"
[settings]
reps = 3
warmup = 0
[measurements.decode]
[measurements.train_step]
[measurements.generate]
gen_length = 4
[measurements.reasoning]
cycles = [1, 2]
segments = [1, 3]
"""


def test_reasoning_rows_per_cycles_and_segments_train_step_and_decode_generate_not_applicable(tmp_path):
    from altbench.runner import run as runner

    (tmp_path / "s.toml").write_text(SUITE)
    run_dir, cells, done = runner.prepare(str(tmp_path / "s.toml"), None, "cpu", tmp_path / "out")
    rows = {(r["measurement"], r["arch"], r.get("task")): r for r in runner.sweep(run_dir, cells, done)}
    model = registry.build("hrm", "tiny", device="meta")
    for cycles, segments in itertools.product([1, 2], [1, 3]):
        row = rows[("reasoning", "hrm", f"c{cycles}-s{segments}")]
        assert row["status"] == "ok" and (row["cycles"], row["segments"]) == (cycles, segments)
        assert row["flops"] == model.reasoning_flops(16, segments, cycles) and row["ms_per_sample"] > 0
        assert row["layer_calls"] == segments * cycles * (2 * 1 + 1)
    assert rows[("reasoning", "hrm", "c2-s3")]["flops"] > 5 * rows[("reasoning", "hrm", "c1-s1")]["flops"]
    forward = rows[("reasoning", "transformer", "forward")]
    assert forward["status"] == "ok" and forward["form"] == "one forward pass (not iterative)"
    assert forward["flops"] == registry.build("transformer", "tiny", device="meta").prefill_flops(16)
    assert rows[("decode", "hrm", None)]["message"] == "not applicable (no causal step)"
    assert rows[("generate", "hrm", None)]["message"] == ("not applicable (neither a causal step to decode with "
                                                          "nor a denoising sampler)")
    assert rows[("decode", "transformer", None)]["status"] == rows[("generate", "transformer", None)]["status"] == "ok"
    train = rows[("train_step", "hrm", None)]
    assert train["status"] == "ok" and train["flops"] == model.train_flops(16) > 2 * model.prefill_flops(16)


def test_lm_eval_refuses_hrm_and_its_suite_cell_is_not_applicable():
    from altbench.evaluation.adapter import build_lm
    from altbench.runner.cells import Cell
    from altbench.runner.suite import Settings
    from altbench.runner.worker import measure_cell

    reason = "neither causal next-token probabilities nor a masked-diffusion likelihood"
    with pytest.raises(UserError, match=f"hrm cannot be scored by lm-eval: it has {reason}; evaluate a causal"):
        build_lm("hrm", "tiny", "cpu", None, 1)
    cell = Cell("hrm", "tiny", "torch", "lm_eval", "float32", "cpu", 1, 0, Settings(), task="altbench_tiny_mc")
    assert measure_cell(cell) == {"status": "skipped", "message": f"not applicable ({reason})"}


@pytest.mark.parametrize("line, message", [
    ("cycles = [0, 1]", "[measurements.reasoning]: key 'cycles' must hold integers >= 1, got 0"),
    ("segments = 0", "[measurements.reasoning]: key 'segments' must hold integers >= 1, got 0"),
    ("segments = [1, 8]", "key 'segments' holds 8, more than hrm tiny's max_segments (4); list segments <= 4"),
], ids=["cycles-0", "segments-0", "segments-over-max"])
def test_bad_reasoning_axes_name_the_key_and_the_fix(line, message, tmp_path):
    from altbench.runner import suite as suites

    (tmp_path / "bad.toml").write_text(SUITE.replace("cycles = [1, 2]\nsegments = [1, 3]", line))
    with pytest.raises(UserError) as refused:
        suites.load(str(tmp_path / "bad.toml"))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_bad_reasoning_axes_exit_2_from_the_cli(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text(SUITE.replace("segments = [1, 3]", "segments = [1, 8]"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    result = subprocess.run([sys.executable, "-m", "altbench", "run", "--suite", str(suite), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("key 'segments' holds 8, more than hrm tiny's max_segments (4); list segments <= 4")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
