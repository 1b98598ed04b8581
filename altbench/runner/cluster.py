"""Spread a run's cells over hosts: one submitit job per shard, on Slurm or submitit's local executor.

A shard is a list of whole series (a series' shorter lengths decide whether its longer ones fit in
their timeout, so a series is never split). Its job, `ShardJob`, runs `runner.sweep` on its node (one
worker per GPU), appending to the shard's own store file and recording its host and versions in its
own env file (runner/rundir.py), as the writer of that shard alone. The submitting command is the
run directory's writer only while it creates the run and records the jobs in jobs.json; it holds
nothing while the shards run.

A job that is preempted or reaches its time limit is requeued by submitit (`ShardJob` is
`Checkpointable`); the requeued job recomputes the shard's missing cells from the store, so no row is
lost or doubled. A resumed run submits new shards for the cells still missing, named after the
earlier ones, so no two jobs ever write one file.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from altbench.errors import UserError
from altbench.runner import rundir, store
from altbench.runner.cells import Cell

EXECUTORS = ("local", "submitit-local", "slurm")
FOLDER = "submitit"  # submitit's pickles and logs, inside the run directory
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")

from submitit.helpers import Checkpointable


@dataclass(frozen=True)
class Resources:
    """Where the shards run: submitit's executor and the Slurm request of each job (one node)."""

    executor: str = "local"
    nodes: int = 1  # shards, one job (array task) on one node each
    gpus_per_node: int = 1  # the sweep's worker pool on each node: one worker per GPU
    workers_per_gpu: int = 1  # workers sharing each GPU (untimed cells only, see runner.check_workers_per_gpu)
    partition: str | None = None
    account: str | None = None
    time_min: int | None = None  # each job's time limit; a job past it is requeued


def check(res: Resources, gpus: int) -> None:
    """UserError naming the fix for options that do not fit the executor, a missing `sbatch` or submitit."""
    if res.executor not in EXECUTORS:
        raise UserError(f"--executor: unknown executor '{res.executor}'; use one of {', '.join(EXECUTORS)}")
    if res.executor == "local":
        given = [o for o, v in (("--nodes", res.nodes != 1), ("--gpus-per-node", res.gpus_per_node != 1),
                                ("--partition", res.partition), ("--account", res.account), ("--time", res.time_min)) if v]
        if given:
            raise UserError(f"{given[0]} spreads a run over jobs: give it with --executor slurm (or submitit-local)")
        return
    if gpus != 1:
        raise UserError(f"--gpus runs one host's pool; with --executor {res.executor} give --gpus-per-node {gpus}")
    if res.nodes < 1 or res.gpus_per_node < 1 or (res.time_min is not None and res.time_min < 1):
        raise UserError("--nodes, --gpus-per-node and --time (minutes) must be at least 1")
    if res.executor == "submitit-local" and (res.partition or res.account):
        raise UserError("--partition and --account are Slurm's: give them with --executor slurm")
    if res.executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no `sbatch` on PATH; run on a Slurm login node, "
                        "or use --executor submitit-local to run the shards on this machine")


def split(cells: list[Cell], k: int) -> list[list[str]]:
    """The cells' ids in at most `k` non-empty shards of whole series, balanced by cell count."""
    series: dict[str, list[str]] = {}
    for cell in cells:
        series.setdefault(cell.series_id, []).append(cell.cell_id)
    shards: list[list[str]] = [[] for _ in range(k)]
    for ids in sorted(series.values(), key=len, reverse=True):
        min(shards, key=len).extend(ids)
    return [s for s in shards if s]


class ShardJob(Checkpointable):
    """One shard's job: the shard's cells not yet stored, run by `runner.sweep` into its own store file.

    Each call (the first, or a requeued one after preemption) reads the store again: a cell counts as
    done when it has a row, except one whose last outcome is in `retry` and started before `since`."""

    def __init__(self, run_dir: str, shard: str, cell_ids: list[str], gpus: int, workers_per_gpu: int = 1,
                 retry: tuple[str, ...] = (), since: float = 0.0):
        self.run_dir, self.shard, self.cell_ids = run_dir, shard, cell_ids
        self.gpus, self.workers_per_gpu, self.retry, self.since = gpus, workers_per_gpu, retry, since

    def __call__(self) -> int:
        from altbench.measure import ceilings, env as envmod
        from altbench.runner import run as runner
        from altbench.runner.worker import call_isolated

        run_dir = Path(self.run_dir)
        rundir.hold_writer(run_dir, self.shard)
        try:
            env = rundir.read_env(run_dir, quiet=True)
            device = env.get("device") or "cpu"
            session = {k: v for k, v in envmod.capture(sys.argv, env.get("suite", "")).items() if k in runner.SESSION_KEYS}
            if device == "cuda":
                session["ceilings"] = call_isolated(ceilings.measure, ("cuda",), timeout_s=300)
            rundir.write_env(run_dir, session, self.shard)
            ids = set(self.cell_ids)
            cells = [c for c in runner.run_cells(run_dir, env, device) if c.cell_id in ids]
            return len(runner.sweep(run_dir, cells, self.done(), gpus=self.gpus, workers_per_gpu=self.workers_per_gpu,
                                    shard=self.shard))
        finally:
            rundir.release_writer(run_dir, self.shard)

    def done(self) -> set[str]:
        return {store.cell_of(r) for r in rundir.latest_rows(Path(self.run_dir))
                if store.outcome(r) not in self.retry or (r.get("started_at") or 0) >= self.since}


def _executor(run_dir: Path, res: Resources, device: str, n_jobs: int):
    import submitit

    executor = submitit.AutoExecutor(folder=run_dir / FOLDER, cluster="local" if res.executor == "submitit-local" else "slurm")
    gpus = res.gpus_per_node if device == "cuda" else 0
    params = dict(name=f"altbench-{run_dir.name}", nodes=1, tasks_per_node=1, gpus_per_node=gpus,
                  timeout_min=res.time_min, slurm_partition=res.partition, slurm_account=res.account,
                  slurm_array_parallelism=n_jobs)
    if res.executor == "submitit-local":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        params["timeout_min"] = res.time_min or 7 * 24 * 60  # submitit's local default is 2 minutes
    executor.update_parameters(**params)
    return executor


def job_state(run_dir: Path, shard: dict) -> str:
    """The shard's job state as submitit reports it (Slurm's, or the local executor's)."""
    import submitit

    job_cls = submitit.LocalJob if shard["executor"] == "submitit-local" else submitit.SlurmJob
    return job_cls(Path(run_dir) / FOLDER, shard["job_id"]).state


def check_idle(run_dir: Path) -> None:
    """UserError when an earlier shard of the run still runs (or waits to): resubmitting would run its cells twice."""
    for shard in rundir.read_jobs(run_dir).get("shards", []):
        try:
            rundir.hold_writer(run_dir, shard["shard"])
        except UserError:
            busy = "running"
        else:
            rundir.release_writer(run_dir, shard["shard"])
            state = job_state(run_dir, shard) if shard["executor"] == "slurm" else ""
            busy = state.lower() if state.split(" ")[0] in ACTIVE else ""
        if busy:
            raise UserError(f"shard {shard['shard']} of {run_dir} (job {shard['job_id']}) is still {busy}; "
                            f"wait for it (`altbench status {run_dir}`) or cancel it, then resume")


def submit(run_dir: Path, cells: list[Cell], done: set[str], res: Resources, device: str,
           retry: tuple[str, ...] = ()) -> list:
    """Submit one job per shard of the cells not in `done` and record them in jobs.json (the caller
    is the run's writer); the submitit jobs, one per shard."""
    todo = [c for c in cells if c.cell_id not in done]
    shards = split(todo, res.nodes)
    jobs = rundir.read_jobs(run_dir)
    jobs.setdefault("shards", [])
    first = max(len(jobs["shards"]), len(rundir.store_files(run_dir)) - 1)  # numbered on: no file gets a second writer
    run_path = str(Path(run_dir).resolve())
    since = time.time()
    fns = [ShardJob(run_path, str(first + i), ids, res.gpus_per_node, res.workers_per_gpu, retry, since)
           for i, ids in enumerate(shards)]
    if not fns:
        return []
    executor = _executor(Path(run_dir), res, device, len(fns))
    with executor.batch():
        submitted = [executor.submit(fn) for fn in fns]
    for fn, job in zip(fns, submitted):
        jobs["shards"].append({"shard": fn.shard, "executor": res.executor, "job_id": str(job.job_id),
                               "workers": fn.gpus * fn.workers_per_gpu, "submitted_at": since, "cells": fn.cell_ids})
    rundir.write_jobs(run_dir, jobs)
    rundir.ensure_store(run_dir)
    return submitted


def shard_status(run_dir: Path) -> list[dict]:
    """Per submitted shard: its job id and state, and its cells done / running / left. "running" is
    the shard's worker pool's share of its missing cells while its job runs (one cell per worker)."""
    finished = {store.cell_of(r) for r in rundir.latest_rows(run_dir)}
    out = []
    for shard in rundir.read_jobs(run_dir).get("shards", []):
        state = job_state(run_dir, shard)
        cells = shard["cells"]
        done = sum(c in finished for c in cells)
        running = min(len(cells) - done, shard.get("workers", 1)) if state == "RUNNING" else 0
        out.append({"shard": shard["shard"], "job_id": shard["job_id"], "state": state, "done": done,
                    "running": running, "left": len(cells) - done - running})
    return out
