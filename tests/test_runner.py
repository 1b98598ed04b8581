"""Runner: suites validate, cells expand, workers isolate failures, the store keeps every row, runs resume."""

import json
import os
import time
from pathlib import Path

import pytest

from altbench.errors import UserError
from altbench.runner import run as runner
from altbench.runner import rundir, store, suite as suites
from altbench.runner.cells import expand
from altbench.runner.worker import Worker

FAULTY = """
name = "faults"
archs = ["plugins.faulty_arch"]
sizes = ["tiny", "raise", "kill", "hang", "oom"]
dtypes = ["float32"]
seq_lens = [16]
[settings]
reps = 3
warmup = 0
timeout_s = 8
[measurements.prefill]
"""


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_each_failure_costs_its_cell_only(tmp_path):
    run_dir, cells, done = runner.prepare(str(write(tmp_path, FAULTY)), None, "cpu", tmp_path / "out")
    runner.sweep(run_dir, cells, done)
    status = {row["size"]: row for row in rundir.read_rows(run_dir)}
    assert {k: v["status"] for k, v in status.items()} == {
        "tiny": "ok", "raise": "error", "kill": "error", "hang": "timeout", "oom": "oom",
    }
    assert "ValueError: injected failure" in status["raise"]["message"]
    assert "Traceback" in status["raise"]["traceback"]
    assert status["kill"]["message"] == "worker killed by SIGKILL"
    assert "8 s" in status["hang"]["message"]
    assert status["tiny"]["ms_median"] > 0 and status["tiny"]["reps"] == 3


def test_one_worker_serves_cells_until_one_errors_then_a_fresh_one_takes_over(tmp_path):
    text = FAULTY.replace('"raise", "kill", "hang", "oom"', '"oom", "raise"').replace("[16]", "[16, 24]")
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    rows = runner.sweep(run_dir, cells, done)
    assert [(r["size"], r["seq_len"], r["status"]) for r in rows] == [
        ("tiny", 16, "ok"), ("oom", 16, "oom"), ("raise", 16, "error"),
        ("tiny", 24, "ok"), ("oom", 24, "oom"), ("raise", 24, "error"),
    ]
    pids = [r["worker_pid"] for r in rows]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5]  # an OOM keeps the worker, an error retires it


def test_cells_that_cannot_finish_in_time_are_skipped_from_the_shorter_length():
    from altbench.runner.cells import beyond_timeout

    cell = next(c for c in expand(suites.load("long-context-backends"), "cuda") if c.cell_id.startswith("prefill/mamba/130m/torch/bfloat16/cuda/b1/L1048576"))
    assert cell.settings.timeout_s == 300
    shorter = {"status": "ok", "seq_len": 262144, "ms_median": 20_000.0}
    assert beyond_timeout(cell, shorter) == (
        "needs >= 320 s (4 calls of >= 80.0 s, linear from 20.0 s at L=262144), over the 300 s cell timeout")
    assert beyond_timeout(cell, {**shorter, "ms_median": 18_000.0}) is None  # 4 x 72 s = 288 s fits
    assert beyond_timeout(cell, {**shorter, "ms_median": 900.0}) is None  # too short to extrapolate from
    assert beyond_timeout(cell, {**shorter, "status": "timeout"}).startswith("timed out at L=262144")
    assert beyond_timeout(cell, {**shorter, "status": "oom"}) is None
    decode = next(c for c in expand(suites.load("long-context-backends"), "cuda") if c.series_id == cell.series_id.replace("prefill", "decode"))
    assert beyond_timeout(decode, {**shorter, "status": "timeout"}) is None  # decode work does not grow with L


def test_sweep_skips_the_longer_cell_of_a_series_that_timed_out(tmp_path):
    run_dir, cells, done = runner.prepare(str(write(tmp_path, FAULTY.replace('"raise", "kill", "hang", "oom"', '').replace("[16]", "[16, 24]"))), None, "cpu", tmp_path / "out")
    first = cells[0]
    rundir.append_row(run_dir, {**first.identity(), "status": "timeout", "message": "no result"})  # as if it hung
    runner.sweep(run_dir, cells, {first.cell_id})
    row = {r["seq_len"]: r for r in rundir.read_rows(run_dir)}[24]
    assert (row["status"], row["message"]) == ("skipped", "timed out at L=16, so L=24 cannot finish within 8 s")


def test_resume_runs_only_unfinished_cells_and_survives_a_torn_line(tmp_path):
    suite = write(tmp_path, FAULTY.replace('"raise", "kill", "hang", "oom"', '"raise"').replace("prefill]", "prefill]\n[measurements.decode]"))
    run_dir, cells, done = runner.prepare(str(suite), None, "cpu", tmp_path / "out")
    assert len(cells) == 4 and not done
    runner.sweep(run_dir, cells[:2], done)  # "interrupted" after two cells ...
    with open(rundir.store_path(run_dir), "a") as f:
        f.write('{"cell_id": "torn')  # ... in the middle of writing a third
    first = rundir.read_rows(run_dir)
    run_dir2, cells2, done2 = runner.prepare(None, run_dir.name, None, tmp_path / "out")
    assert run_dir2 == run_dir and done2 == {r["cell_id"] for r in first} and len(done2) == 2
    new = runner.sweep(run_dir2, cells2, done2)
    assert [r["cell_id"] for r in new] == [c.cell_id for c in cells[2:]]
    rows = rundir.read_rows(run_dir)
    assert rows[:2] == first and len(rows) == 4  # earlier rows untouched
    env = json.loads((run_dir / "env.json").read_text())
    assert len(env["resumes"]) == 1 and env["resumes"][0]["git_commit"] == env["git_commit"]
    runner.prepare(None, run_dir.name, None, tmp_path / "out")  # nothing left to run: no new session
    assert len(json.loads((run_dir / "env.json").read_text())["resumes"]) == 1


def test_retry_runs_a_failed_cell_again_and_reports_keep_only_its_last_attempt(tmp_path):
    suite = write(tmp_path, FAULTY.replace('"raise", "kill", "hang", "oom"', '"raise"'))
    run_dir, cells, done = runner.prepare(str(suite), None, "cpu", tmp_path / "out")
    runner.sweep(run_dir, cells, done)
    assert runner.prepare(None, str(run_dir), None, tmp_path, retry=("timeout",))[2] == {c.cell_id for c in cells}
    _, cells2, done2 = runner.prepare(None, str(run_dir), None, tmp_path, retry=("error",))
    failed = [c.cell_id for c in cells if c.size == "raise"]
    assert {c.cell_id for c in cells2} - done2 == set(failed)
    time.sleep(0.01)  # a later started_at
    runner.sweep(run_dir, cells2, done2)
    rows = rundir.read_rows(run_dir)
    assert len(rows) == 3 and [r["cell_id"] for r in rows].count(failed[0]) == 2  # the first attempt is kept
    latest = rundir.latest_rows(run_dir)
    assert len(latest) == 2 and next(r for r in latest if r["cell_id"] == failed[0]) == rows[-1]


def test_a_retried_timeout_is_judged_from_the_shorter_length_not_from_itself(tmp_path):
    text = FAULTY.replace('"raise", "kill", "hang", "oom"', "").replace("[16]", "[16, 32]")
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    runner.sweep(run_dir, cells[:1], done)
    long_id = cells[1].cell_id
    rundir.append_row(run_dir, {"cell_id": long_id, "seq_len": 32, "status": "timeout", "started_at": 1.0})
    _, cells, done = runner.prepare(None, str(run_dir), None, tmp_path, retry=("timeout",))
    assert [c.cell_id for c in cells if c.cell_id not in done] == [long_id]
    (row,) = runner.sweep(run_dir, cells, done)
    assert row["status"] == "ok", row["message"]


def test_latest_rows_keep_every_point_of_a_probe_cells_last_attempt_only(tmp_path):
    point = lambda i, t, status="ok": {"cell_id": f"probe/mqar/hawk/{i}", "cell": "probe/mqar/hawk", "started_at": t,
                                       "status": status, "curve": [[10, 9.0], [20, None if t == 1 else 8.0]]}
    for r in [point(0, 1), point(1, 1), {"cell_id": "prefill/x", "started_at": 1, "status": "ok"}, point(0, 2), point(1, 2)]:
        rundir.append_row(tmp_path, r)
    latest = rundir.latest_rows(tmp_path)
    assert [(r["cell_id"], r["started_at"]) for r in latest] == [("prefill/x", 1), ("probe/mqar/hawk/0", 2), ("probe/mqar/hawk/1", 2)]
    assert [store.outcome(r) for r in rundir.read_rows(tmp_path)] == ["diverged", "diverged", "ok", "ok", "ok"]
    rundir.append_row(tmp_path, {"cell_id": "probe/mqar/hawk", "started_at": 3, "status": "error"})  # a failed retry: one row
    assert [r["cell_id"] for r in rundir.latest_rows(tmp_path)] == ["prefill/x", "probe/mqar/hawk"]


def test_summary_names_each_resumed_session_and_warns_when_its_setup_differs(tmp_path):
    from altbench.report import _env_headline

    env = {"torch": "2.11.0", "git_commit": "a" * 40, "cpu": "Xeon", "gpu": {"name": "H100", "driver": "580"}}
    same = dict(env, command="altbench run --resume r", hostname="vm", created_at="2026-11-23T12:00:00+00:00",
                ceilings={"launch_us": 9.04})
    lines = _env_headline(tmp_path, dict(env, resumes=[same]))
    assert "- resumed: `altbench run --resume r` on vm, 2026-11-23T12:00:00+00:00, host 9.0 us per eager launch" in lines
    assert not any("warning" in line for line in lines)
    other = dict(same, torch="2.12.0", gpu={"name": "H200", "driver": "580"})
    warning = [line for line in _env_headline(tmp_path, dict(env, resumes=[other])) if "warning" in line]
    assert warning == ["- **warning**: that session ran on a different setup (GPU H100 -> H200; torch 2.11.0 -> 2.12.0); "
                       "cells started after it are not comparable one-to-one with earlier ones"]


def test_suite_limits_become_skipped_rows(tmp_path):
    text = FAULTY.replace('"raise", "kill", "hang", "oom"', "").replace("[16]", "[16, 32]")
    text += "[measurements.train_step]\nmax_seq_len = 16\n"
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    runner.sweep(run_dir, cells, done)
    rows = {r["cell_id"]: r for r in rundir.read_rows(run_dir)}
    skipped = rows["train_step/plugins.faulty_arch/tiny/torch/float32/cpu/b1/L32"]
    assert skipped["status"] == "skipped" and "seq_len <= 16" in skipped["message"]
    assert rows["train_step/plugins.faulty_arch/tiny/torch/float32/cpu/b1/L16"]["status"] == "ok"


def test_backends_without_an_implementation_or_not_installed_are_skipped_rows(tmp_path):
    text = FAULTY.replace('"raise", "kill", "hang", "oom"', "").replace("dtypes", 'backends = ["mamba_ssm"]\ndtypes')
    text = text.replace('archs = ["plugins.faulty_arch"]', 'archs = ["plugins.faulty_arch", "mamba2"]')
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    rows = {r["arch"]: r for r in runner.sweep(run_dir, cells, done)}
    assert rows["plugins.faulty_arch"]["status"] == "skipped"
    assert rows["plugins.faulty_arch"]["message"] == "backend mamba_ssm has no implementation of plugins.faulty_arch"
    assert rows["mamba2"]["status"] == "skipped" and rows["mamba2"]["message"] == "backend mamba_ssm is not installed"


def test_smoke_suite_expands_to_every_axis():
    suite = suites.load("smoke")
    cells = expand(suite, "cpu")
    steps = len(suite.extra["generate"]["steps"])  # one generate cell per N for llada, one per AR model
    segments = len(suite.extra["reasoning"]["segments"])  # hrm at its cycles x each segment count, the others once
    per_length = (len(suite.archs) * (len(suite.measurements) - 2) + len(suite.archs_of("generate")) - 1 + steps
                  + len(suite.archs_of("reasoning")) - 1 + segments)
    assert len(cells) == per_length * len(suite.seq_lens)
    reasoning = sorted(c.task for c in cells if c.measurement == "reasoning" and c.seq_len == suite.seq_lens[0])
    assert reasoning == ["c2-s1", "c2-s2", "forward"]
    assert len({c.cell_id for c in cells}) == len(cells)


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\narchs = ["mamba",,]', r"invalid TOML: .*line 2"),
        ('archs = ["transformer"]\nseq_lens = [8]\nwidth = 3\n[measurements.prefill]', r"unknown key 'width'; known: name"),
        ('archs = ["gpt5"]\nseq_lens = [8]\n[measurements.prefill]', r"unknown arch 'gpt5' in 'archs'; known: transformer, mamba"),
        ('archs = ["mamba"]\nsizes = ["9b"]\nseq_lens = [8]\n[measurements.prefill]', r"size '9b' is not defined for mamba; known: tiny, 130m"),
        ('archs = ["mamba"]\nseq_lens = [8]\n[measurements.prefil]', r"unknown measurement 'prefil'.*known: prefill, decode"),
        ('archs = ["mamba"]\nseq_lens = [8]\n[settings]\nreps = "ten"\n[measurements.prefill]', r"\[settings\]: key 'reps' must be int, got str 'ten'"),
        ('archs = ["mamba"]\nseq_lens = [8]\n[measurements.prefill]\nrepz = 3', r"\[measurements.prefill\]: unknown key 'repz'"),
        ('archs = ["mamba"]\nseq_lens = [8]\n[measurements.decode]\ncompile_scope = "block"',
         r"\[measurements.decode\]: key 'compile_scope' must be one of layer, model, got 'block'"),
        ('archs = ["mamba"]\nseq_lens = [8]\n[settings]\ncompile_scope = 1\n[measurements.decode]',
         r"key 'compile_scope' must be str, got int 1"),
        ('archs = ["mamba"]\nseq_lens = [0]\n[measurements.prefill]', r"'seq_lens' must hold positive integers, got 0"),
        ('archs = ["mamba"]\nseq_lens = [8]', r"key 'measurements' is required"),
    ],
    ids=["bad-toml", "unknown-key", "unknown-arch", "unknown-size", "unknown-measurement", "wrong-type",
         "unknown-setting", "bad-scope", "scope-not-a-string", "bad-length", "missing-key"],
)
def test_bad_suites_name_file_key_and_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as e:
        suites.load(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_suite_lists_known_ones():
    with pytest.raises(UserError, match=r"unknown suite 'nope'; known: .*smoke"):
        suites.load("nope")


def test_env_json_records_versions_and_command(tmp_path):
    run_dir, _, _ = runner.prepare("smoke", None, "cpu", tmp_path)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] and env["python"] and env["suite"] == "smoke" and env["device"] == "cpu"
    assert "command" in env and "git_commit" in env and env["gpu"] is None or isinstance(env["gpu"], dict)


def test_env_names_the_cpu_model_from_proc_cpuinfo(monkeypatch, tmp_path):
    from altbench.measure import env as envmod

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    real_path = envmod.Path
    monkeypatch.setattr(envmod, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert envmod.cpu_model() == "AMD EPYC 9654 96-Core Processor"


def test_a_commit_named_in_the_environment_wins_over_the_checkouts_git(monkeypatch):
    from altbench.measure import env as envmod

    monkeypatch.setenv("ALTBENCH_GIT_COMMIT", "c" * 40)  # a copied tree whose .git (if any) is stale
    env = envmod.capture(["altbench"], "smoke")
    assert (env["git_commit"], env["git_dirty"]) == ("c" * 40, False)


def test_time_budget_cuts_reps_of_slow_calls_but_keeps_three():
    import time

    from altbench.measure.timing import time_calls

    calls = []
    timing = time_calls(lambda: (calls.append(1), time.sleep(0.05)), "cpu", reps=50, warmup=5, budget_s=0.1)
    assert len(timing.samples_ms) == 3 and len(calls) == 4  # first call + 3 reps, warm-up dropped
    fast = time_calls(lambda: None, "cpu", reps=20, warmup=2, budget_s=10)
    assert len(fast.samples_ms) == 20 and fast.warmup == 2


def test_probe_cells_store_one_row_per_point_and_resume_by_cell(tmp_path):
    text = """
archs = ["transformer"]
sizes = ["tiny"]
seq_lens = [1]
[measurements.probe]
tasks = ["copying"]
steps = 40
batch = 16
test_examples = 64
[measurements.probe.copying]
seq_len = 8
num_tokens = [2, 4]
"""
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    assert [c.cell_id for c in cells] == ["probe/copying/transformer/tiny/torch/float32/cpu/b1/L0"]
    rows = runner.sweep(run_dir, cells, done)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows[0].get("message")
    assert [r["num_tokens"] for r in rows] == [2, 4] and all(0 <= r["value"] <= 1 for r in rows)
    assert {r["cell"] for r in rows} == {cells[0].cell_id} and len({r["cell_id"] for r in rows}) == 2
    _, _, done = runner.prepare(None, str(run_dir), None, tmp_path / "out")
    assert done == {cells[0].cell_id}


def test_suite_name_wins_over_a_directory_of_the_same_name(tmp_path, monkeypatch):
    (tmp_path / "smoke").mkdir()  # e.g. `--out smoke` from an earlier run
    monkeypatch.chdir(tmp_path)
    assert suites.load("smoke").name == "smoke"
    with pytest.raises(UserError, match="suite file missing.toml does not exist"):
        suites.load("missing.toml")


def test_parallel_sweep_assigns_one_worker_per_gpu_and_keeps_every_row(tmp_path):
    text = FAULTY.replace('"raise", "kill", "hang", "oom"', '"raise"').replace("[16]", "[16, 24]")
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    rows = runner.sweep(run_dir, cells, done, gpus=2)  # CUDA_VISIBLE_DEVICES is set per worker; CPU cells ignore it
    assert sorted(r["cell_id"] for r in rundir.read_rows(run_dir)) == sorted(c.cell_id for c in cells)
    assert {r["gpu"] for r in rows} <= {0, 1} and {r["status"] for r in rows} == {"ok", "error"}
    assert {r["cpu_threads"] for r in rows} == {max(1, os.cpu_count() // 2)}  # the two workers split the cores


def test_a_worker_runs_with_its_cpu_threads_and_keeps_triton_autotuning_on_disk():
    from plugins.faulty_arch import worker_facts

    with Worker(threads=1) as worker:
        facts = worker.call(worker_facts, (), timeout_s=60)
    assert facts["threads"] == 1
    assert facts["autotune_cache"] == os.environ.get("TRITON_CACHE_AUTOTUNING") == "1"


def test_more_gpus_than_the_machine_has_is_a_user_error():
    import torch

    with pytest.raises(UserError, match=rf"--gpus 64: this machine has {torch.cuda.device_count()} visible CUDA GPU"):
        runner.check_gpus(64)


@pytest.mark.parametrize("name", suites.known_suites())
def test_every_shipped_suite_loads_and_expands(name):
    suite = suites.load(name)
    cells = expand(suite, suite.device)
    assert cells and len({c.cell_id for c in cells}) == len(cells)
    assert [c.seq_len for c in cells] == sorted(c.seq_len for c in cells)  # shortest lengths first


def test_lm_eval_cells_store_one_row_per_task_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    text = 'archs = ["mamba"]\nsizes = ["tiny"]\nseq_lens = [1]\n[measurements.lm_eval]\ntasks = ["altbench_tiny_mc"]\nlimit = 4\n'
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    rows = runner.sweep(run_dir, cells, done)
    assert [(r["status"], r["task"], r["metric"]) for r in rows] == [("ok", "altbench_tiny_mc", "acc")], rows[0].get("message")
    assert 0 <= rows[0]["value"] <= 1 and rows[0]["cell"] == cells[0].cell_id


def test_summary_counts_the_cells_an_interrupted_run_has_not_reached(tmp_path):
    from altbench.report import render_run

    text = FAULTY.replace('"raise", "kill", "hang", "oom"', '').replace("[16]", "[16, 24]")
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    runner.sweep(run_dir, cells[:1], done)  # interrupted after one of two cells
    render_run(run_dir)
    summary = (run_dir / "summary.md").read_text()
    assert "| prefill | 1 | 0 | 0 | 0 | 0 | 1 |" in summary
    assert f"**Incomplete run**: 1 cells of the suite have no row yet; `altbench run --resume {run_dir}`" in summary
    runner.sweep(*runner.prepare(None, str(run_dir), None, tmp_path / "out"))
    render_run(run_dir)
    summary = (run_dir / "summary.md").read_text()
    assert "| prefill | 2 | 0 | 0 | 0 | 0 | 0 |" in summary and "Incomplete" not in summary


def test_cpu_peak_memory_is_the_cells_own_after_a_reset():
    import torch

    from altbench.measure import memory

    cpu = torch.device("cpu")
    big = torch.ones(64 << 20)  # 256 MiB, touched: it counts in RSS ...
    big.add_(1)
    del big  # ... and is gone before the next cell
    memory.reset_peak(cpu)
    if not memory._rss_mark_reset:
        pytest.skip("this kernel does not let a process reset its peak-RSS mark")
    small = memory.peak(cpu)
    assert small["mem_source"] == "process_rss"
    keep = torch.ones(32 << 20)
    keep.add_(1)  # 128 MiB during this "cell"
    grown = memory.peak(cpu)["peak_mem_bytes"] - small["peak_mem_bytes"]
    assert 100 << 20 < grown < 200 << 20  # the 128 MiB of this cell, not the 256 MiB of the last


def test_workers_share_a_gpu_for_untrained_cells_only(tmp_path):
    text = """
archs = ["transformer", "mamba"]
sizes = ["tiny"]
seq_lens = [1]
[measurements.probe]
tasks = ["copying"]
steps = 2
batch = 4
test_examples = 8
[measurements.probe.copying]
seq_len = 8
num_tokens = 2
"""
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    runner.check_workers_per_gpu(2, cells, done)
    rows = runner.sweep(run_dir, cells, done, workers_per_gpu=2)
    assert sorted(r["arch"] for r in rows) == ["mamba", "transformer"] and {r["status"] for r in rows} == {"ok"}
    assert len({r["worker_pid"] for r in rows}) == 2  # each cell found the other worker busy
    _, timed, _ = runner.prepare(str(write(tmp_path, FAULTY)), None, "cpu", tmp_path / "out")
    with pytest.raises(UserError, match="--workers-per-gpu 2: .* timed cells \\(prefill\\)"):
        runner.check_workers_per_gpu(2, timed, set())
    runner.check_workers_per_gpu(1, timed, set())


def test_an_interrupt_kills_cells_in_flight_and_stores_no_row_for_them(tmp_path):
    text = FAULTY.replace('"raise", "kill", "hang", "oom"', '"hang"').replace("timeout_s = 8", "timeout_s = 60")
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")

    def ctrl_c(row: dict) -> None:  # Ctrl-C lands once the tiny cell is stored, the hanging one in flight
        raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        runner.sweep(run_dir, cells, done, on_row=ctrl_c, gpus=2)
    assert time.perf_counter() - t0 < 30  # not the hanging cell's 60 s timeout
    assert [r["size"] for r in rundir.read_rows(run_dir)] == ["tiny"]
    _, _, done = runner.prepare(None, str(run_dir), None, tmp_path / "out")
    assert done == {cells[0].cell_id}  # resume runs the hanging cell again


FIRST = """
archs = ["mamba", "rwkv7", "transformer"]
backends = ["triton", "fla", "torch"]
backend_choice = "first"
seq_lens = [16]
[measurements.prefill]
[measurements.train_step]
"""


@pytest.mark.parametrize("fla_installed", [False, True], ids=["fla-missing", "fla-installed"])
def test_first_backend_choice_measures_each_arch_once(tmp_path, monkeypatch, fla_installed):
    monkeypatch.setattr(suites.registry, "backend_installed", lambda b: b != "fla" or fla_installed)
    cells = expand(suites.load(str(write(tmp_path, FIRST))), "cpu")
    rwkv7 = "fla" if fla_installed else "torch"
    assert sorted((c.measurement, c.arch, c.backend) for c in cells) == [
        ("prefill", "mamba", "triton"), ("prefill", "rwkv7", rwkv7), ("prefill", "transformer", "torch"),
        ("train_step", "mamba", "triton"),  # altbench's Triton kernels train too
        ("train_step", "rwkv7", rwkv7), ("train_step", "transformer", "torch"),
    ]
    each = expand(suites.load(str(write(tmp_path, FIRST.replace('"first"', '"each"')))), "cpu")
    assert len(each) == 3 * 3 * 2


FASTEST = """
archs = ["mamba", "rwkv7", "retnet", "transformer"]
backend_choice = "fastest"
seq_lens = [16]
[measurements.prefill]
[measurements.train_step]
"""


@pytest.mark.parametrize("fla_installed", [False, True], ids=["fla-missing", "fla-installed"])
def test_fastest_backend_choice_follows_the_registry_order_not_the_suites(tmp_path, monkeypatch, fla_installed):
    monkeypatch.setattr(suites.registry, "backend_installed", lambda b: b not in ("fla", "mamba_ssm") or fla_installed and b == "fla")
    fla = "fla" if fla_installed else "torch"
    expected = [("prefill", "mamba", "triton"), ("prefill", "retnet", "triton"), ("prefill", "rwkv7", fla),
                ("prefill", "transformer", "torch"), ("train_step", "mamba", "triton"), ("train_step", "retnet", "triton"),
                ("train_step", "rwkv7", fla), ("train_step", "transformer", "torch")]
    for text in (FASTEST, FASTEST.replace("seq_lens", 'backends = ["torch", "fla", "triton"]\nseq_lens')):
        cells = expand(suites.load(str(write(tmp_path, text))), "cpu")
        assert sorted((c.measurement, c.arch, c.backend) for c in cells) == expected
    pinned = expand(suites.load(str(write(tmp_path, FASTEST.replace("seq_lens", 'backends = ["torch"]\nseq_lens')))), "cpu")
    assert {c.backend for c in pinned} == {"torch"}  # a suite can still pin a backend


def test_unknown_backend_choice_names_the_choices(tmp_path):
    with pytest.raises(UserError, match=r"suite.toml: key 'backend_choice' must be one of each, first, fastest, got 'best'"):
        suites.load(str(write(tmp_path, FIRST.replace('"first"', '"best"'))))


def test_env_counts_the_triton_cache_so_first_calls_read_as_compiles_or_cache_loads(monkeypatch, tmp_path):
    pytest.importorskip("triton")
    from altbench.measure import env as envmod
    from altbench.report import _env_headline

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    assert envmod.triton_cache() == {"dir": str(tmp_path / "cache"), "entries": 0}
    for name in ("abc", "def", "ghi"):
        (tmp_path / "cache" / name).mkdir(parents=True)
    cache = envmod.triton_cache()
    assert cache["entries"] == 3
    cold = _env_headline(tmp_path, {"triton_cache": {"dir": "/c", "entries": 0}})
    assert "- Triton cache at start: empty (`/c`): first calls include compiling and autotuning" in cold
    warm = "\n".join(_env_headline(tmp_path, {"triton_cache": cache, "resumes": [{"triton_cache": cache}]}))
    assert warm.count("3 entries in") == 2 and "first calls are not compile times" in warm


def test_measurements_a_model_cannot_do_are_not_applicable_rows_shown_as_na(tmp_path):
    from altbench.report import status_label

    text = FAULTY.replace('"raise", "kill", "hang", "oom"', "").replace("plugins.faulty_arch", "plugins.stepless_arch")
    text = text.replace("[16]", "[16, 32]").replace("timeout_s = 8", "timeout_s = 60\nprefill_segment = 16")
    text += "[measurements.decode]\n"
    run_dir, cells, done = runner.prepare(str(write(tmp_path, text)), None, "cpu", tmp_path / "out")
    rows = {(r["measurement"], r["seq_len"]): r for r in runner.sweep(run_dir, cells, done)}
    assert rows[("prefill", 16)]["status"] == "ok"  # one segment: no state to carry
    assert rows[("prefill", 32)]["message"] == "not applicable (no state carried across prefill segments of 16 tokens)"
    assert rows[("decode", 16)]["message"] == "not applicable (no causal step)"
    assert {status_label(rows[k]) for k in [("decode", 16), ("decode", 32), ("prefill", 32)]} == {"n/a"}
