"""One writer per run directory: a second one is refused naming the holder, a writer killed with
kill -9 leaves no stale lock, two `--resume` started together run each remaining cell once, and
every session that ran cells is in env.json."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from inprocess import altbench

from altbench.runner import rundir
from altbench.runner import run as runner

TESTS = Path(__file__).parent
SUITE = """
name = "writers"
archs = ["plugins.faulty_arch"]
sizes = {sizes}
dtypes = ["float32"]
seq_lens = [16]
[settings]
reps = 3
warmup = 0
timeout_s = {timeout}
[measurements.prefill]
"""


def interrupted_run(tmp_path: Path, sizes=("tiny",), timeout: int = 60) -> Path:
    """A run whose suite is written and no cell has run yet, as a crash leaves it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite = tmp_path / "writers.toml"
    suite.write_text(SUITE.format(sizes=json.dumps(list(sizes)), timeout=timeout))
    run_dir, _, _ = runner.prepare(str(suite), None, "cpu", tmp_path / "out")
    rundir.release_writer(run_dir)
    return run_dir


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "altbench", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def rows_by_cell(run_dir: Path) -> dict[str, list[str]]:
    cells: dict[str, list[str]] = {}
    for row in rundir.read_rows(run_dir):
        cells.setdefault(row["cell_id"], []).append(row["status"])
    return cells


def test_a_second_writer_exits_2_naming_the_holder_and_its_kill_leaves_no_lock(tmp_path):
    run_dir = interrupted_run(tmp_path)
    code = f"from altbench.runner import rundir; rundir.hold_writer({str(run_dir)!r}); print('held', flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        refused = altbench("run", "--resume", run_dir)
        assert refused.code == 2
        (line,) = refused.stderr.strip().splitlines()
        assert f"is being written by pid {holder.pid} on {socket.gethostname()} since 20" in line, line
        assert not rundir.read_rows(run_dir)
    finally:
        holder.kill()  # SIGKILL: no chance to release anything
        holder.wait()
    resumed = altbench("run", "--resume", run_dir)
    assert resumed.code == 0, resumed.stderr
    assert rows_by_cell(run_dir) == {"prefill/plugins.faulty_arch/tiny/torch/float32/cpu/b1/L16": ["ok"]}
    assert not (run_dir / rundir.HOLDER_FILE).exists()


def test_a_run_killed_mid_cell_leaves_no_stale_lock(tmp_path):
    run_dir = interrupted_run(tmp_path, sizes=("tiny", "hang"), timeout=6)
    first = start("run", "--resume", run_dir)
    deadline = time.monotonic() + 120
    while not rundir.read_rows(run_dir):  # the tiny cell is stored: the hanging one is in flight
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the command, its forkserver and its worker
    first.wait()
    assert json.loads((run_dir / rundir.HOLDER_FILE).read_text())["pid"] == first.pid  # it never let go
    again = altbench("run", "--resume", run_dir)
    assert again.code == 0, again.stderr
    assert "1 cells to run, 1 already done" in again.stdout
    assert sorted(rows_by_cell(run_dir).values()) == [["ok"], ["timeout"]]


def test_two_resumes_started_together_run_each_cell_once_five_times(tmp_path):
    runs = [interrupted_run(tmp_path / str(attempt)) for attempt in range(5)]
    pairs = [[start("run", "--resume", run_dir) for _ in range(2)] for run_dir in runs]  # all ten at once
    for run_dir, both in zip(runs, pairs):
        results = [(p.returncode, out, err) for p in both for out, err in [p.communicate(timeout=300)]]
        ran = [out for code, out, _ in results if code == 0 and "1 cells to run" in out]
        assert len(ran) == 1, results  # exactly one ran the remaining cell ...
        for code, out, err in results:
            if code == 2:  # ... the other was refused while it ran, or found nothing left
                (line,) = err.strip().splitlines()
                assert "is being written by pid" in line, line
            else:
                assert code == 0 and ("1 cells to run" in out or "0 cells to run" in out), (code, out, err)
        assert list(rows_by_cell(run_dir).values()) == [["ok"]]
        assert len(rundir.read_env(run_dir)["resumes"]) == len(ran)
