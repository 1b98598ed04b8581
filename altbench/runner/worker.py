"""Run one cell in an isolated worker process.

A worker builds the model, runs the measurement and sends back one row. Whatever happens inside
it — an exception, a CUDA fault, an OOM, a segfault, a hang — costs that cell only: the parent
reads either the row or nothing, checks the exit code, kills the worker at the cell's timeout,
and turns each case into a row with its status ('ok', 'oom', 'error', 'timeout', 'skipped').
A worker that raised an error, died or hung is replaced by a fresh one for the next cell.

Workers fork from a forkserver that has already imported torch and altbench, so starting one takes
milliseconds, and no worker inherits a CUDA context. A sweep keeps one worker per GPU for as long
as its cells succeed (see `Worker`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback

from altbench.runner.cells import CAPABILITY, NOT_APPLICABLE, Cell, beyond_timeout

_OOM_MARKERS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(m in str(exc) for m in _OOM_MARKERS)


def measure_cell(cell: Cell) -> dict:
    """Inside the worker: the figures of one cell, or a 'skipped' row when it cannot run here."""
    import torch

    from altbench import registry
    from altbench.measure import memory, scenarios
    from altbench.models import moe

    if not registry.backend_installed(cell.backend):
        return {"status": "skipped", "message": f"backend {cell.backend} is not installed"}
    device = torch.device(cell.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "error", "message": "no CUDA device visible to the worker"}

    if cell.measurement in CAPABILITY:
        if reason := scenarios.lacking(registry.family(cell.arch).MODEL.capabilities, cell.measurement):
            return {"status": "skipped", "message": f"{NOT_APPLICABLE} ({reason})"}
        return {"status": "ok", "message": "", "rows": capability_rows(cell)}

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(cell.seq_len * 1_000_003 + cell.batch)
    dtype = getattr(torch, cell.dtype)
    model = registry.build(cell.arch, cell.size, device="meta", backend=cell.backend)  # the backend sets its workspace
    if reason := scenarios.not_applicable(model, cell):
        return {"status": "skipped", "message": f"{NOT_APPLICABLE} ({reason})"}
    figures = {"params": model.params(), "state_bytes": model.state_bytes(cell.batch, cell.seq_len, dtype)}
    figures["predicted_mem_bytes"] = scenarios.predicted_bytes(model, cell)
    capacity = memory.device_capacity(device)
    if capacity is not None and figures["predicted_mem_bytes"] > capacity:
        gib = 1 << 30
        return {**figures, "status": "skipped",
                "message": f"predicted {figures['predicted_mem_bytes'] / gib:.1f} GiB > {capacity / gib:.1f} GiB free on the device"}

    memory.reset_peak(device)
    if cell.weights:
        from altbench.models import hf

        model = hf.load_pretrained(cell.arch, cell.weights, cell.size)
        registry.use_backend(model, cell.arch, cell.backend)
        model = model.to(device=device, dtype=dtype).eval()
    else:
        model = registry.build(cell.arch, cell.size, device=device, dtype=dtype, backend=cell.backend).eval()
    figures.update(scenarios.MEASURE[cell.measurement](model, cell, device, generator))
    figures.update(memory.peak(device))
    figures.update(moe.load_stats(model) or {})  # routed tokens over the cell's calls (MoE models only)
    return {"status": "ok", "message": "", **figures}


def capability_rows(cell: Cell) -> list[dict]:
    """Probe accuracies or lm-eval scores: one row fragment per task / axis point."""
    if cell.measurement == "probe":
        from altbench.probes import run_probe

        return run_probe(cell.arch, cell.size, cell.task, cell.device, dict(cell.extra))
    from altbench.evaluation import run_eval

    options = dict(cell.extra)
    weights = cell.weights or options.pop("weights", None)  # --weights, or the suite's [measurements.lm_eval]
    return run_eval(
        cell.arch, cell.size, cell.task.split(","), cell.device, weights=weights,
        limit=options.pop("limit", None), batch_size=options.pop("batch_size", 8), **options,
    )


def _call(target, args) -> dict:
    try:
        return target(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure must become a row
        status = "oom" if _is_oom(exc) else "skipped" if isinstance(exc, NotImplementedError) else "error"
        return {"status": status, "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                "traceback": traceback.format_exc()}


def _release_memory() -> None:
    """Free what the last call left behind, so the next cell's free-memory check and peak are its own."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _serve(gpu: int | None, threads: int | None, conn) -> None:
    """The worker's loop: receive (target, args), send back its row, until told to stop. An 'error'
    ends the process: a CUDA fault poisons its context, so the next call gets a fresh worker."""
    if gpu is not None:  # before anything initialises CUDA in this process; the gpu-th of those visible (Slurm's)
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[gpu] if gpu < len(visible) else str(gpu)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        row = _call(*job)
        conn.send(row)
        if row.get("status") == "error":
            return
        _release_memory()


_context = None


def _mp_context():
    global _context
    if _context is None:
        # Triton keeps compiled kernels on disk; with this it keeps autotuning results there too, so
        # a kernel is tuned once per shape on a machine instead of once per worker process (fla's
        # kernels took 30-195 s per new shape on an H100). Set before the forkserver starts, as its
        # preloaded modules build their autotuners at import. A user's own setting wins.
        os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(["torch", "altbench.runner.worker", "altbench.measure.scenarios", "altbench.measure.ceilings"])
    return _context


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code} without a result"


class Worker:
    """A worker process that runs calls one after another, started on first use and restarted
    after any call that killed it, hung past its timeout or raised an error.

    Keeping the process between cells keeps its CUDA context, cuBLAS handles, lazily loaded kernels
    and Triton's compiled and autotuned kernels, which would otherwise cost seconds per cell; a
    cell's failure still costs that cell only. `first_call_ms` is therefore the first call of the
    cell, after whatever earlier cells of the same worker already compiled.
    """

    def __init__(self, gpu: int | None = None, threads: int | None = None):
        self.gpu = gpu  # the one GPU the process sees (None: all)
        self.threads = threads  # its intra-op CPU threads (None: torch's default, every core)
        self._process = None
        self._conn = None

    def _start(self) -> None:
        ctx = _mp_context()
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(self.gpu, self.threads, child), daemon=True)
        self._process.start()
        child.close()

    def call(self, target, args: tuple, timeout_s: float) -> dict:
        """`target(*args)` (a dict) computed in the worker; on any failure, a dict with status and message."""
        if self._process is None or not self._process.is_alive():
            self._start()
        t0, pid = time.perf_counter(), self._process.pid
        result = None
        try:
            self._conn.send((target, args))
            if self._conn.poll(timeout_s):
                result = self._conn.recv()
        except (EOFError, OSError):
            result = None  # the worker died before sending: its exit code says how
        wall = time.perf_counter() - t0
        if result is None:
            code = self.close(kill=True)
            if wall >= timeout_s:
                result = {"status": "timeout", "message": f"no result within the cell timeout of {timeout_s:g} s"}
            else:
                result = {"status": "error", "message": _describe_exit(code)}
            result["worker_exit_code"] = code
        elif result.get("status") == "error":
            self.close()
        return {**result, "wall_s": wall, "worker_pid": pid}

    def close(self, kill: bool = False) -> int | None:
        """Stop the process (asking it to finish, or killing it); its exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if not kill and process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            process.join(10)
        if process.is_alive():
            process.kill()
        process.join()
        self._conn.close()
        return process.exitcode

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call_isolated(target, args: tuple, timeout_s: float, gpu: int | None = None) -> dict:
    """`target(*args)` computed in a fresh worker of its own (see `Worker.call`)."""
    with Worker(gpu) as worker:
        return worker.call(target, args, timeout_s)


def run_cell(cell: Cell, worker: Worker, shorter: dict | None = None) -> list[dict]:
    """The cell's rows (identity + outcome + figures), measured in `worker`'s process, or one
    'skipped' row when the suite excludes the cell or, judged from `shorter` (the same series' row
    at the next shorter length), it cannot finish within its timeout.

    One row for a timed cell; one per task / axis point for a capability cell, each with its own
    cell_id (the cell's id + '/<n>') and `cell` naming the cell they came from.
    """
    from altbench import registry

    row = {**cell.identity(), "started_at": time.time()}
    reason = cell.skip_reason() or beyond_timeout(cell, shorter)
    if reason is None and cell.backend not in registry.backends_of(cell.arch):
        reason = f"backend {cell.backend} has no implementation of {cell.arch}"
    if reason:
        return [{**row, "status": "skipped", "message": reason, "wall_s": 0.0}]
    result = {**row, **worker.call(measure_cell, (cell,), cell.settings.timeout_s)}
    if worker.gpu is not None:
        result["gpu"] = worker.gpu
    if worker.threads is not None:
        result["cpu_threads"] = worker.threads
    points = result.pop("rows", None)
    if not points:
        return [result]
    return [{**result, **point, "cell_id": f"{cell.cell_id}/{i}", "cell": cell.cell_id} for i, point in enumerate(points)]
