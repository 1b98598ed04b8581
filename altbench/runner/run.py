"""A sweep: expand the suite, run each unfinished cell in an isolated worker, append each row as it lands.

The run directory (runner/rundir.py) gets its suite copy and env.json (measure/env.py) before the
first cell, and is written by one process at a time: `prepare` makes this process its writer.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from altbench import registry
from altbench.errors import UserError
from altbench.measure import ceilings, env as envmod, roofline
from altbench.runner import cluster, rundir, store, suite as suites
from altbench.runner.cells import CAPABILITY, Cell, expand, series_of
from altbench.runner.worker import Worker, call_isolated, run_cell


def find_run(ref: str, out: Path) -> Path:
    """The run `--resume` names, as a directory path or as a run id under `out`."""
    for candidate in (Path(ref), out / ref):
        if rundir.is_file(candidate / rundir.SUITE_FILE):
            return candidate
    runs = sorted(p.name for p in out.glob("*/") if (p / rundir.SUITE_FILE).is_file()) if rundir.is_dir(out) else []
    hint = f"runs under {out}: {', '.join(runs[-5:])}" if runs else f"no runs under {out}"
    raise UserError(f"--resume: run '{ref}' not found ({hint})")


def check_device(device: str, here: bool = True) -> None:
    """UserError for an unknown device, or for cuda where the cells run `here` and no GPU is visible."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device: unknown device '{device}'; use cpu or cuda")
    if device == "cuda" and here:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible on this machine; run with --device cpu")


def check_gpus(n: int) -> None:
    import torch

    have = torch.cuda.device_count()
    if n > have:
        raise UserError(f"--gpus {n}: this machine has {have} visible CUDA GPU(s); pass --gpus {max(have, 1)}")


def check_workers_per_gpu(n: int, cells: list[Cell], done: set[str]) -> None:
    """Cells may share a GPU only when none of them is timed: a neighbour's kernels would be in
    every timing. Probes and lm-eval only train and score, so several can share one GPU, which
    a tiny model's launch-bound training leaves mostly idle."""
    timed = sorted({c.measurement for c in cells if c.cell_id not in done and c.measurement not in CAPABILITY})
    if n > 1 and timed:
        raise UserError(f"--workers-per-gpu {n}: cells sharing a GPU would distort each other's timings, and this "
                        f"run has timed cells ({', '.join(timed)}); use it only for probe and lm_eval suites")


def _apply_overrides(suite: suites.Suite, overrides: dict) -> suites.Suite:
    """Narrow or redirect a suite from the command line (`--archs`, `--backends`, `--weights`)."""
    archs, backends = overrides.get("archs"), overrides.get("backends")
    if archs:
        for arch in archs:
            for size in suite.arch_sizes.get(arch, suite.sizes):
                try:
                    registry.config(arch, size)
                except UserError as e:
                    raise UserError(f"--archs: {e}") from None
        suite = dataclasses.replace(suite, archs=list(dict.fromkeys(archs)))
    if backends:
        unknown = [b for b in backends if b not in registry.BACKENDS]
        if unknown:
            raise UserError(f"--backends: unknown backend {unknown[0]!r}; known: {', '.join(registry.BACKENDS)}")
        suite = dataclasses.replace(suite, backends=list(dict.fromkeys(backends)))
    if overrides.get("weights") and len(suite.archs) * len(suite.sizes) != 1:
        raise UserError("--weights needs a suite with one architecture and one size (the checkpoint's)")
    return suite


def run_cells(run_dir: Path, env: dict, device: str | None = None) -> list[Cell]:
    """Every cell of an existing run: its own suite.toml with the overrides its env.json keeps."""
    overrides = env.get("overrides", {})
    suite = _apply_overrides(suites.load(str(run_dir / rundir.SUITE_FILE)), overrides)
    return expand(suite, device or env.get("device") or suite.device, overrides.get("weights", ""))


def finished(run_dir: Path, retry: tuple[str, ...] = ()) -> set[str]:
    """Ids of the run's cells that have a row (a capability cell's rows name it in `cell`), less those
    whose last attempt's outcome is in `retry` (e.g. "timeout", "diverged"): they run again."""
    return {store.cell_of(row) for row in rundir.latest_rows(run_dir) if store.outcome(row) not in retry}


def check_retry(retry: tuple[str, ...], resume: str | None) -> None:
    if retry and not resume:
        raise UserError("--retry re-runs cells of an existing run: give --resume RUN with it")
    unknown = [r for r in retry if r not in store.OUTCOMES]
    if unknown:
        raise UserError(f"--retry: unknown outcome {', '.join(unknown)} (known: {', '.join(store.OUTCOMES)})")


SESSION_KEYS = ("created_at", "command", "hostname", "cpu", "torch", "triton", "git_commit", "git_dirty", "gpu",
                "triton_cache", "inductor_cache")


def _record_session(run_dir: Path, device: str) -> None:
    """Append this resumed session's machine and versions to env.json's `resumes` (read again here,
    under the writer's lock, so no session is lost): cells that start after its created_at ran there,
    which may be another host (with its own launch cost) or commit."""
    env = rundir.read_env(run_dir)
    session = {k: v for k, v in envmod.capture(sys.argv, env.get("suite", "")).items() if k in SESSION_KEYS}
    if device == "cuda":
        session["ceilings"] = call_isolated(ceilings.measure, ("cuda",), timeout_s=300)
    env.setdefault("resumes", []).append(session)
    rundir.write_env(run_dir, env)


def prepare(
    suite_ref: str | None, resume: str | None, device: str | None, out: Path,
    archs: list[str] | None = None, weights: str | None = None, retry: tuple[str, ...] = (),
    backends: list[str] | None = None, gpus: int = 1, workers_per_gpu: int = 1, sharded: bool = False,
) -> tuple[Path, list[Cell], set[str]]:
    """The run directory, its cells, and the ids of cells already finished (when resuming; a cell whose
    last outcome is in `retry` counts as not finished, and its new rows supersede the old in reports).

    This process becomes the run directory's writer (`rundir.hold_writer`) until it calls
    `rundir.release_writer` or exits. Every option and suite value is checked before anything is
    written, so a refused command leaves nothing behind.

    `archs` and `backends` replace the suite's architectures and backends, and `weights` (a local
    Hugging Face checkpoint) replaces random weights; all are kept in env.json so `--resume` runs
    the same cells.

    `sharded`: the cells will run as jobs on other hosts (runner/cluster.py), so this host's devices
    are not checked or measured; each shard records its own host and ceilings.
    """
    check_retry(retry, resume)
    if resume and (archs or backends or weights):
        raise UserError("a resumed run keeps its own architectures, backends and weights: "
                        "drop --archs / --backends / --weights, or start a new run")
    if resume:
        run_dir = find_run(resume, out)
        env = rundir.read_env(run_dir)
        device = device or env.get("device") or suites.load(str(run_dir / rundir.SUITE_FILE)).device
        check_device(device, here=not sharded)
        cells = run_cells(run_dir, env, device)
        _check_parallel(gpus, workers_per_gpu, cells, finished(run_dir, retry), sharded)
        rundir.hold_writer(run_dir)
        try:
            cluster.check_idle(run_dir)  # a shard of the run still at work would run its cells a second time
        except UserError:
            rundir.release_writer(run_dir)
            raise
        done = finished(run_dir, retry)  # again as the writer: another one may have finished cells meanwhile
        if not sharded and any(cell.cell_id not in done for cell in cells):
            _record_session(run_dir, device)
        return run_dir, cells, done
    if not suite_ref:
        raise UserError("give --suite NAME|PATH.toml (known: " + ", ".join(suites.known_suites()) + ") or --resume RUN")
    overrides = {k: v for k, v in (("archs", archs), ("backends", backends), ("weights", weights)) if v}
    suite = _apply_overrides(suites.load(suite_ref), overrides)
    if weights:
        from altbench.models import hf

        if not rundir.is_dir(weights):
            raise UserError(f"--weights {weights}: not a directory; point it at a local Hugging Face checkpoint directory")
        weights = str(Path(weights).resolve())
        overrides["weights"] = weights
        hf.check_checkpoint(suite.archs[0], weights, suite.sizes_of(suite.archs[0])[0])
    device = device or suite.device
    check_device(device, here=not sharded)
    cells = expand(suite, device, overrides.get("weights", ""))
    _check_parallel(gpus, workers_per_gpu, cells, set(), sharded)
    run_dir = rundir.create(out, suite.name)
    rundir.hold_writer(run_dir)
    rundir.write_bytes(run_dir / rundir.SUITE_FILE, suite.path.read_bytes())
    env = envmod.capture(sys.argv, suite.name)
    env["device"], env["overrides"] = device, overrides
    if device == "cuda" and not sharded:
        env["ceilings"] = call_isolated(ceilings.measure, ("cuda",), timeout_s=300)
    rundir.write_env(run_dir, env)
    return run_dir, cells, set()


def _check_parallel(gpus: int, workers_per_gpu: int, cells: list[Cell], done: set[str], sharded: bool = False) -> None:
    if gpus > 1 and not sharded:
        check_gpus(gpus)
    check_workers_per_gpu(workers_per_gpu, cells, done)


def sweep(
    run_dir: Path, cells: list[Cell], done: set[str],
    on_start: Callable[[Cell], None] = lambda cell: None, on_row: Callable[[dict], None] = lambda row: None,
    gpus: int = 1, workers_per_gpu: int = 1, shard: str | None = None,
) -> list[dict]:
    """Run every cell not in `done`, appending each row to the store (or shard `shard`'s file, whose
    own env file gives the roofline ceilings) as soon as it exists.

    One worker process serves the cells in turn; with gpus > 1, cells run in parallel, one worker
    per GPU (each sees only its own device), and `workers_per_gpu` workers share each GPU
    (untimed cells only: `check_workers_per_gpu`). Workers side by side split the CPU cores
    between them instead of each starting torch's default of one thread per core.
    """
    todo = [c for c in cells if c.cell_id not in done]
    rows, lock, interrupted = [], threading.Lock(), threading.Event()
    measured: dict[str, dict[int, dict]] = {}  # series -> length -> its last row there

    def note(row: dict) -> None:
        if row.get("seq_len") and row.get("status") != "skipped":
            measured.setdefault(series_of(row["cell_id"]), {})[row["seq_len"]] = row

    for row in rundir.latest_rows(run_dir):
        note(row)
    env = rundir.read_env(run_dir, quiet=True)
    device_ceilings = roofline.run_ceilings(env["shards"][shard] if shard is not None else env)  # each row carries its roofline bound

    def run_one(cell: Cell, worker: Worker) -> None:
        on_start(cell)
        with lock:  # the row at the next shorter length measured (a retried cell's own old row is not one)
            series = measured.get(cell.series_id, {})
            shorter = series.get(max((n for n in series if n < cell.seq_len), default=None))
        for row in run_cell(cell, worker, shorter):
            if interrupted.is_set():  # its worker was killed by the interrupt: not a result, resume reruns it
                return
            row["run_id"] = run_dir.name
            row.update(roofline.bounds(row, device_ceilings))
            with lock:
                rundir.append_row(run_dir, row, shard)
                rows.append(row)
                note(row)
        on_row(row)

    n = max(gpus, 1) * workers_per_gpu
    threads = max(1, (os.cpu_count() or 1) // n) if n > 1 else None  # side by side, they share the cores
    workers = [Worker(gpu, threads) for gpu in ([None] if gpus <= 1 else range(gpus)) for _ in range(workers_per_gpu)]
    free: queue.Queue[Worker] = queue.Queue()
    for worker in workers:
        free.put(worker)

    def on_free_worker(cell: Cell) -> None:
        worker = free.get()
        try:
            run_one(cell, worker)
        finally:
            free.put(worker)

    pool = ThreadPoolExecutor(max_workers=len(workers))
    try:
        list(pool.map(on_free_worker, todo))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a preempted job's exit: stop now, keep every row already stored
        interrupted.set()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:  # killing a busy worker ends its cell's wait at once
            worker.close(kill=interrupted.is_set())
        pool.shutdown()
    return rows
