"""Runs spread over jobs through submitit's local executor (the path Slurm takes, on this machine):
shards write their own store files, readers merge them, preempted jobs and resumes run each cell once."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from altbench.runner import cluster, rundir
from altbench.runner import run as runner
from inprocess import altbench

TESTS = Path(__file__).parent

TINY = """
name = "tiny-cluster"
archs = ["transformer", "mamba"]
sizes = ["tiny"]
dtypes = ["float32"]
seq_lens = [16, 32]
device = "cpu"
[settings]
reps = 3
warmup = 1
timeout_s = 60
[measurements.prefill]
"""

PREEMPTED = """
name = "preempted"
archs = ["plugins.faulty_arch"]
sizes = ["tiny", "hang"]
dtypes = ["float32"]
seq_lens = [16]
device = "cpu"
[settings]
reps = 3
warmup = 0
timeout_s = 6
[measurements.prefill]
"""


def counts(run_dir: Path) -> Counter:
    return Counter(row["cell_id"] for row in rundir.read_rows(run_dir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A plain run and the same suite in 2 submitit-local shards."""
    tmp = tmp_path_factory.mktemp("cluster")
    suite = tmp / "tiny.toml"
    suite.write_text(TINY)
    plain, cells, done = runner.prepare(str(suite), None, None, tmp / "plain")
    runner.sweep(plain, cells, done)
    rundir.release_writer(plain)
    result = altbench("run", "--suite", suite, "--executor", "submitit-local", "--nodes", 2, "--wait", "--out", tmp / "sharded")
    assert result.code == 0, result.stderr
    return plain, Path(result.stdout.strip().splitlines()[-1]), result


def test_two_shards_store_the_cells_of_a_plain_run_once_each(runs):
    plain, sharded, result = runs
    assert set(counts(sharded).values()) == {1}
    assert set(counts(sharded)) == set(counts(plain))
    assert rundir.store_path(sharded).read_bytes() == b""  # every row is in its shard's own file
    jobs = rundir.read_jobs(sharded)["shards"]
    assert [s["shard"] for s in jobs] == ["0", "1"]
    for shard in jobs:
        assert set(shard["cells"]) == {r["cell_id"] for r in _rows(sharded, shard["shard"])}
        assert f"job {shard['job_id']}" in result.stdout
    env = rundir.read_env(sharded)
    assert set(env["shards"]) == {"0", "1"} and all(s["hostname"] and s["torch"] for s in env["shards"].values())
    assert not list(sharded.glob(".writer*.json"))  # no writer left behind


def _rows(run_dir: Path, shard: str) -> list[dict]:
    return [json.loads(line) for line in rundir.store_path(run_dir, shard).read_text().splitlines()]


def test_report_compare_gate_and_status_read_a_sharded_run(runs, tmp_path):
    plain, sharded, _ = runs
    report = altbench("report", sharded)
    assert report.code == 0, report.stderr
    summary = (sharded / "summary.md").read_text()
    assert "prefill" in summary and "- shard 0: " in summary and "- shard 1: " in summary
    compare = altbench("compare", "transformer", "mamba", "--run", sharded, "--out", tmp_path / "cmp")
    assert compare.code == 0, compare.stderr
    assert "mamba" in (tmp_path / "cmp" / "compare.md").read_text()
    gate = altbench("gate", "--baseline", plain, "--candidate", sharded, "--threshold", "1000")
    assert gate.code == 0, gate.stdout + gate.stderr
    assert "transformer" in gate.stdout
    status = altbench("status", sharded)
    assert status.code == 0, status.stderr
    lines = [line for line in status.stdout.splitlines() if "FINISHED" in line]
    assert len(lines) == 2 and all([c.strip() for c in line.split("│")][4:7] == ["2", "0", "0"] for line in lines), status.stdout
    promoted = altbench("gate", "--baseline", tmp_path / "baseline", "--candidate", sharded, "--update-baseline")
    assert promoted.code == 0, promoted.stderr
    assert counts(tmp_path / "baseline") == counts(sharded)
    plain_status = altbench("status", plain)
    assert plain_status.code == 2 and "not submitted as jobs" in plain_status.stderr


def test_resume_after_a_failed_shard_submits_only_its_missing_cells(runs, tmp_path):
    """Shard 1 dies after storing its first row (its file cut back to that row, as a killed job leaves it)."""
    _, sharded, _ = runs
    run = tmp_path / sharded.name
    run.mkdir()
    for path in sharded.iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    kept = rundir.store_path(run, "1").read_text().splitlines()[0] + "\n"
    rundir.store_path(run, "1").write_text(kept)
    shard1 = rundir.read_jobs(run)["shards"][1]["cells"]
    missing = sorted(set(shard1) - {json.loads(kept)["cell_id"]})
    holding = subprocess.Popen([sys.executable, "-c", "import sys, time; from altbench.runner import rundir; "
                                f"rundir.hold_writer({str(run)!r}, '1'); print(flush=True); time.sleep(60)"],
                               stdout=subprocess.PIPE, text=True)
    holding.stdout.readline()  # shard 1's job, still at work
    refused = altbench("run", "--resume", run, "--executor", "submitit-local")
    holding.kill()
    holding.wait()
    assert refused.code == 2 and "shard 1" in refused.stderr and "still running" in refused.stderr, refused.stderr
    assert len(rundir.read_jobs(run)["shards"]) == 2
    result = altbench("run", "--resume", run, "--executor", "submitit-local", "--wait")
    assert result.code == 0, result.stderr
    assert sorted(rundir.read_jobs(run)["shards"][2]["cells"]) == missing
    assert counts(run) == Counter({cell: 1 for cell in counts(sharded)})


def test_a_preempted_shard_is_requeued_and_loses_or_doubles_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    suite = tmp_path / "preempted.toml"
    suite.write_text(PREEMPTED)
    run_dir, cells, done = runner.prepare(str(suite), None, None, tmp_path / "out", sharded=True)
    resources = cluster.Resources("submitit-local", nodes=1)
    [job] = cluster.submit(run_dir, cells, done, resources, "cpu")
    rundir.release_writer(run_dir)
    deadline = time.monotonic() + 60
    while not (rundir.store_path(run_dir, "0").exists() and rundir.store_path(run_dir, "0").read_text()):
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(0.2)
    holder = json.loads((run_dir / ".writer.0.json").read_text())  # the shard's writer: submitit's task process
    os.kill(holder["pid"], signal.SIGUSR2)  # Slurm's preemption signal, while the hang cell is in flight
    job.result()
    assert "Requeued" in (job.stderr() or "") + (job.stdout() or "")
    rows = rundir.read_rows(run_dir)
    assert Counter(r["cell_id"] for r in rows) == Counter(c.cell_id for c in cells)
    assert {r["size"]: r["status"] for r in rows} == {"tiny": "ok", "hang": "timeout"}


def test_slurm_without_sbatch_and_bad_options_are_one_line_exit_2_and_create_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    for args, words in (
        (("--executor", "slurm"), "no `sbatch` on PATH"),
        (("--executor", "submitit-local", "--nodes", "0"), "--nodes"),
        (("--nodes", "2"), "--executor slurm"),
        (("--executor", "submitit-local", "--partition", "gpu"), "--executor slurm"),
        (("--executor", "submitit-local", "--gpus", "2"), "--gpus-per-node 2"),
        (("--executor", "pbs"), "unknown executor"),
    ):
        result = altbench("run", "--suite", "smoke", "--out", out, *args)
        assert result.code == 2 and words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
