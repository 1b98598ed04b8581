"""The CI gate on synthetic stores: a slowdown fails it only when it is real."""

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from altbench import gate
from altbench.cli import app
from altbench.errors import UserError
from altbench.runner.rundir import append_row, read_rows

ENV = {
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "560.35.03", "cuda": "12.6", "count": 1, "memory_bytes": 80 << 30},
    "torch": "2.11.0+cu130", "triton": "3.6.0", "python": "3.12.3", "packages": {}, "git_commit": "a" * 40,
    "git_dirty": False, "command": "altbench run --suite gate", "hostname": "ci", "cpu": "x86_64", "platform": "Linux",
    "created_at": "2026-11-20T10:00:00+00:00", "ceilings": None, "suite": "gate",
}
LENGTHS = (1024, 2048, 4096)


def samples(median: float, spread: float, seed: int, n: int = 30) -> list[float]:
    """n log-normal timings with relative spread `spread`, scaled so their median is exactly `median`."""
    x = np.exp(np.random.default_rng(seed).normal(0.0, spread, n))
    return list(x / np.median(x) * median)


def timed_row(seq_len: int, ms: list[float] | None = None, status: str = "ok", arch: str = "mamba", **extra) -> dict:
    row = {"cell_id": f"prefill/{arch}/tiny/torch/bfloat16/cuda/b1/L{seq_len}", "arch": arch, "size": "tiny",
           "backend": "torch", "measurement": "prefill", "dtype": "bfloat16", "device": "cuda", "batch": 1,
           "seq_len": seq_len, "status": status, "message": "" if status == "ok" else "CUDA out of memory"}
    if ms is not None:
        ci = stats.quantile_test(np.array(ms), q=float(np.median(ms))).confidence_interval(0.95)
        row.update(ms_median=float(np.median(ms)), ms_ci_low=float(ci.low), ms_ci_high=float(ci.high),
                   ms_samples=ms, reps=len(ms), warmup=3)
    return {**row, **extra}


def write_run(run_dir, rows, **env_changes):
    run_dir.mkdir(parents=True)
    (run_dir / "env.json").write_text(json.dumps({**ENV, **env_changes}))
    (run_dir / "suite.toml").write_text('name = "gate"\n')
    for row in rows:
        append_row(run_dir, row)
    return run_dir


def pair(tmp_path, slowdown: float, spread: float, at: int = 2048, **env_changes):
    """A baseline and a candidate whose cell at length `at` is `slowdown` times slower (same noise level)."""
    base = [timed_row(n, samples(n / 1000, spread, seed=n)) for n in LENGTHS]
    cand = [timed_row(n, samples(n / 1000 * (slowdown if n == at else 1.0), spread, seed=n + 1)) for n in LENGTHS]
    return write_run(tmp_path / "base", base), write_run(tmp_path / "cand", cand, **env_changes)


def verdicts(result) -> dict:
    return {c.cell_id.rsplit("/", 1)[1]: c.verdict for c in result.cells}


def test_tight_slowdown_regresses(tmp_path):
    result = gate.judge(*pair(tmp_path, slowdown=1.10, spread=0.005))
    assert verdicts(result) == {"L1024": "unchanged", "L2048": "regressed", "L4096": "unchanged"}
    slow = next(c for c in result.cells if c.verdict == "regressed")
    assert slow.change == pytest.approx(0.10, abs=1e-9)
    assert slow.method == "mann-whitney" and slow.p_value < 1e-6
    assert result.exit_code == 1
    text = result.markdown()
    assert "FAIL: 1 of 3 cells" in text and "prefill/mamba/tiny/torch/bfloat16/cuda/b1/L2048" in text and "+10.0%" in text


def test_slowdown_hidden_in_noise_passes(tmp_path):
    result = gate.judge(*pair(tmp_path, slowdown=1.10, spread=0.30))
    cell = next(c for c in result.cells if c.cell_id.endswith("L2048"))
    assert cell.change == pytest.approx(0.10, abs=1e-9)  # the same slowdown as above...
    assert cell.verdict == "unchanged" and cell.p_value > 0.002 and cell.note == "within noise"  # ...but not distinguishable
    assert result.exit_code == 0
    assert "PASS" in result.markdown()


@pytest.mark.parametrize("spread", [0.005, 0.30], ids=["tight", "noisy"])
def test_improvement_never_fails(tmp_path, spread):
    result = gate.judge(*pair(tmp_path, slowdown=0.80, spread=spread))
    assert verdicts(result)["L2048"] == ("improved" if spread < 0.1 else "unchanged")
    assert result.exit_code == 0


def test_slowdown_below_threshold_is_unchanged(tmp_path):
    base, cand = pair(tmp_path, slowdown=1.03, spread=0.001)  # real (p tiny) but smaller than 5%
    assert verdicts(gate.judge(base, cand))["L2048"] == "unchanged"
    assert verdicts(gate.judge(base, cand, threshold=0.02))["L2048"] == "regressed"


@pytest.mark.parametrize("cand_ci, expected", [((1.08, 1.12), "regressed"), ((0.98, 1.22), "unchanged")],
                         ids=["apart", "overlapping"])
def test_intervals_decide_without_samples(tmp_path, cand_ci, expected):
    base = write_run(tmp_path / "base", [timed_row(1024, ms_median=1.0, ms_ci_low=0.97, ms_ci_high=1.03)])
    cand = write_run(tmp_path / "cand", [timed_row(1024, ms_median=1.10, ms_ci_low=cand_ci[0], ms_ci_high=cand_ci[1])])
    (cell,) = gate.judge(base, cand).cells
    assert (cell.verdict, cell.method, cell.p_value) == (expected, "intervals", None)


def test_too_few_samples_for_the_test_use_intervals(tmp_path):
    # 4 + 4 samples: the smallest one-sided p is 1/70 > alpha, so Mann-Whitney could never say "real".
    base = write_run(tmp_path / "base", [timed_row(1024, [1.00, 1.01, 0.99, 1.00], ms_ci_low=0.99, ms_ci_high=1.01)])
    cand = write_run(tmp_path / "cand", [timed_row(1024, [1.20, 1.21, 1.19, 1.20], ms_ci_low=1.19, ms_ci_high=1.21)])
    (cell,) = gate.judge(base, cand).cells
    assert (cell.verdict, cell.method) == ("regressed", "intervals")


def test_missing_new_and_broken_cells(tmp_path):
    tight = 0.005
    base = write_run(tmp_path / "base", [timed_row(n, samples(1.0, tight, n)) for n in (1024, 2048, 4096)])
    cand = write_run(tmp_path / "cand", [
        timed_row(1024, samples(1.0, tight, 7)),
        timed_row(2048, status="oom"),  # ran in the baseline, not in the candidate: a breakage
        timed_row(8192, samples(3.0, tight, 8)),
    ])
    result = gate.judge(base, cand)
    assert verdicts(result) == {"L1024": "unchanged", "L2048": "not-ok", "L4096": "missing-in-candidate", "L8192": "new"}
    assert [c.cell_id.rsplit("/", 1)[1] for c in result.failing] == ["L2048"]
    assert result.exit_code == 1
    text = result.markdown()
    for word in ("missing-in-candidate", "not-ok", "new", "baseline ok, candidate oom: CUDA out of memory"):
        assert word in text


def test_missing_and_new_alone_do_not_fail(tmp_path):
    base = write_run(tmp_path / "base", [timed_row(n, samples(1.0, 0.005, n)) for n in (1024, 2048)])
    cand = write_run(tmp_path / "cand", [timed_row(n, samples(1.0, 0.005, n + 1)) for n in (1024, 4096)])
    result = gate.judge(base, cand)
    assert result.counts() == {"regressed": 0, "not-ok": 0, "undecided": 0, "missing-in-candidate": 1, "improved": 0, "new": 1, "unchanged": 1}
    assert result.exit_code == 0


def test_capability_cells_are_not_judged(tmp_path):
    probe = {"cell_id": "probe/mamba/tiny/torch/float32/cpu/b1/L64", "arch": "mamba", "measurement": "probe",
             "seq_len": 64, "status": "ok", "task": "mqar", "metric": "acc"}
    base = write_run(tmp_path / "base", [timed_row(1024, samples(1.0, 0.005, 1)), {**probe, "value": 0.9}])
    cand = write_run(tmp_path / "cand", [timed_row(1024, samples(1.0, 0.005, 2)), {**probe, "value": 0.1}])
    assert [c.cell_id for c in gate.judge(base, cand).cells] == ["prefill/mamba/tiny/torch/bfloat16/cuda/b1/L1024"]


def test_env_mismatch_refuses_unless_allowed(tmp_path):
    other_gpu = {**ENV["gpu"], "driver": "570.86.10"}
    base, cand = pair(tmp_path, slowdown=1.0, spread=0.005, gpu=other_gpu, git_commit="b" * 40)
    refused = gate.judge(base, cand)
    assert refused.refused and refused.cells == [] and refused.exit_code == 1
    assert [item.name for item in refused.env_mismatch] == ["driver"]
    text = refused.markdown()
    assert "REFUSED: the environments differ in driver" in text and "570.86.10" in text and "--allow-env-mismatch" in text

    allowed = gate.judge(base, cand, allow_env_mismatch=True)
    assert not allowed.refused and len(allowed.cells) == 3 and allowed.exit_code == 0
    assert "judged anyway" in allowed.markdown()


def test_commit_difference_alone_does_not_refuse(tmp_path):
    result = gate.judge(*pair(tmp_path, slowdown=1.0, spread=0.005, git_commit="b" * 40, python="3.12.9"))
    assert not result.refused and result.exit_code == 0


def test_update_baseline_replaces_the_baseline(tmp_path):
    base, cand = pair(tmp_path, slowdown=1.10, spread=0.005)
    assert gate.judge(base, cand).exit_code == 1
    written = gate.update_baseline(cand, base)
    assert sorted(p.name for p in written) == ["cells.jsonl", "env.json", "suite.toml"]
    assert read_rows(base) == read_rows(cand)  # replaced, not appended to
    result = gate.judge(base, cand)
    assert set(verdicts(result).values()) == {"unchanged"} and result.exit_code == 0


def test_usage_errors(tmp_path):
    base, cand = pair(tmp_path, slowdown=1.0, spread=0.005)
    with pytest.raises(UserError, match="not a run directory"):
        gate.judge(tmp_path / "nowhere", cand)
    other = write_run(tmp_path / "other", [timed_row(1024, samples(1.0, 0.005, 1), arch="transformer")])
    with pytest.raises(UserError, match="share no timed cell"):
        gate.judge(base, other)
    with pytest.raises(UserError, match="threshold"):
        gate.judge(base, cand, threshold=0.0)
    with pytest.raises(UserError, match="already the baseline"):
        gate.update_baseline(base, base)


def test_cli_gate_exit_codes(tmp_path, monkeypatch):
    base, cand = pair(tmp_path / "results" / "baselines", slowdown=1.10, spread=0.005)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    failed = runner.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand)])
    assert failed.exit_code == 1 and "FAIL" in failed.output
    passed = runner.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand), "--threshold", "0.2"])
    assert passed.exit_code == 0 and "PASS" in passed.output
    updated = runner.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand), "--update-baseline"])
    assert updated.exit_code == 0 and read_rows(base) == read_rows(cand)


def test_eager_min_len_leaves_out_short_eager_cells_but_not_graph_decode(tmp_path):
    base, cand = pair(tmp_path, slowdown=1.10, spread=0.005, at=2048)  # the slow cell is eager, at 2048
    graph = lambda n, ms: timed_row(n, ms, cuda_graphs=True) | {"cell_id": f"decode/mamba/tiny/torch/bfloat16/cuda/b1/L{n}",
                                                                 "measurement": "decode"}
    append_row(base, graph(1024, samples(0.5, 0.005, seed=7)))
    append_row(cand, graph(1024, samples(0.6, 0.005, seed=8)))
    result = gate.judge(base, cand, eager_min_len=4096)
    assert verdicts(result) == {"L1024": "regressed", "L4096": "unchanged"}  # the graph decode and the long cell
    assert result.host_bound == 2 and "2 eager cells shorter than 4096 tokens were not judged" in result.markdown()
    out = CliRunner().invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand), "--eager-min-len", "2048"])
    assert out.exit_code == 1 and "L1024" in out.output and "1 eager cells shorter than 2048" in out.output and "+10.0%" in out.output


def test_newest_run_skips_baselines(tmp_path):
    old = write_run(tmp_path / "results" / "smoke-1", [timed_row(1024, [1.0])], created_at="2026-11-20T10:00:00+00:00")
    new = write_run(tmp_path / "results" / "smoke-2", [timed_row(1024, [1.0])], created_at="2026-11-21T10:00:00+00:00")
    write_run(tmp_path / "results" / "baselines" / "h100", [timed_row(1024, [1.0])], created_at="2026-11-22T10:00:00+00:00")
    assert gate.newest_run(tmp_path / "results") == new
    assert gate.newest_run(tmp_path / "results", exclude=new) == old


def test_a_slowdown_too_few_samples_can_decide_is_undecided_and_fails_only_when_asked(tmp_path, monkeypatch):
    # 3 + 3 samples and no intervals: neither the test nor the intervals can tell a 20% change from noise.
    base = write_run(tmp_path / "base", [timed_row(1024, ms_median=1.0, ms_samples=[1.0, 1.01, 0.99]),
                                         timed_row(2048, ms_median=2.0)])
    cand = write_run(tmp_path / "cand", [timed_row(1024, ms_median=1.2, ms_samples=[1.2, 1.21, 1.19]),
                                         timed_row(2048, ms_median=1.5)])
    lenient = gate.judge(base, cand)
    assert verdicts(lenient) == {"L1024": "undecided", "L2048": "undecided"} and lenient.exit_code == 0
    slow, fast = lenient.cells
    assert slow.note == "3 + 3 samples and no intervals: 13 candidate reps would decide it"
    assert fast.note == "0 + 0 samples and no intervals: 6 reps on each side would decide it"
    text = lenient.markdown()
    assert gate.RULE.format(threshold=0.05, alpha=0.002, reps=6) in text and "PASS" in text
    assert "Undecided cells do not fail the gate (--fail-undecided makes them)" in text

    strict = gate.judge(base, cand, fail_undecided=True)
    assert [c.verdict for c in strict.failing] == ["undecided"]
    assert strict.failing[0].cell_id.endswith("L1024") and strict.exit_code == 1  # a speed-up never fails

    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    assert cli.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand)]).exit_code == 0
    assert cli.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand), "--fail-undecided"]).exit_code == 1
