"""Run one cell in an isolated worker process.

A worker builds the model, runs the measurement and sends back one row. Whatever happens inside
it — an exception, a CUDA fault, an OOM, a segfault, a hang — costs that cell only: the parent
reads either the row or nothing, checks the exit code, kills the worker at the cell's timeout,
and turns each case into a row with its status ('ok', 'oom', 'error', 'timeout', 'skipped').

Workers fork from a forkserver that has already imported torch and altbench, so starting one takes
milliseconds, and no worker inherits a CUDA context.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback

from altbench.runner.cells import CAPABILITY, Cell

_OOM_MARKERS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(m in str(exc) for m in _OOM_MARKERS)


def measure_cell(cell: Cell) -> dict:
    """Inside the worker: the figures of one cell, or a 'skipped' row when it cannot run here."""
    import torch

    from altbench import registry
    from altbench.measure import memory, scenarios

    if not registry.backend_installed(cell.backend):
        return {"status": "skipped", "message": f"backend {cell.backend} is not installed"}
    device = torch.device(cell.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "error", "message": "no CUDA device visible to the worker"}

    if cell.measurement in CAPABILITY:
        return {"status": "ok", "message": "", "rows": capability_rows(cell)}

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(cell.seq_len * 1_000_003 + cell.batch)
    dtype = getattr(torch, cell.dtype)
    model = registry.build(cell.arch, cell.size, device="meta")
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


def _worker_main(target, args, gpu: int | None, conn) -> None:
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    try:
        row = target(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure must become a row
        status = "oom" if _is_oom(exc) else "skipped" if isinstance(exc, NotImplementedError) else "error"
        row = {"status": status, "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
               "traceback": traceback.format_exc()}
    conn.send(row)
    conn.close()


_context = None


def _mp_context():
    global _context
    if _context is None:
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


def call_isolated(target, args: tuple, timeout_s: float, gpu: int | None = None) -> dict:
    """`target(*args)` (a dict) computed in a fresh worker; on any failure, a dict with status and message."""
    ctx = _mp_context()
    receive, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_worker_main, args=(target, args, gpu, send), daemon=True)
    t0 = time.perf_counter()
    worker.start()
    send.close()
    result = None
    try:
        if receive.poll(timeout_s):
            result = receive.recv()
    except (EOFError, OSError):
        result = None  # the worker died before sending: its exit code says how
    finally:
        if result is None and worker.is_alive():
            worker.kill()
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join()
    wall = time.perf_counter() - t0
    if result is None:
        if wall >= timeout_s:
            result = {"status": "timeout", "message": f"no result within the cell timeout of {timeout_s:g} s"}
        else:
            result = {"status": "error", "message": _describe_exit(worker.exitcode)}
    return {**result, "wall_s": wall, "worker_exit_code": worker.exitcode}


def run_isolated(cell: Cell, gpu: int | None = None) -> list[dict]:
    """The cell's rows (identity + outcome + figures), measured in a fresh worker process.

    One row for a timed cell; one per task / axis point for a capability cell, each with its own
    cell_id (the cell's id + '/<n>') and `cell` naming the cell they came from.
    """
    from altbench import registry

    row = {**cell.identity(), "started_at": time.time()}
    reason = cell.skip_reason()
    if reason is None and cell.backend not in registry.backends_of(cell.arch):
        reason = f"backend {cell.backend} has no implementation of {cell.arch}"
    if reason:
        return [{**row, "status": "skipped", "message": reason, "wall_s": 0.0}]
    result = {**row, **call_isolated(measure_cell, (cell,), cell.settings.timeout_s, gpu)}
    if gpu is not None:
        result["gpu"] = gpu
    points = result.pop("rows", None)
    if not points:
        return [result]
    return [{**result, **point, "cell_id": f"{cell.cell_id}/{i}", "cell": cell.cell_id} for i, point in enumerate(points)]
