"""Energy per token from NVML's total-energy counter (millijoules since the driver loaded).

    joules_per_token = (counter after - counter before) / 1000 / tokens processed in between

The counter is read around a run of back-to-back calls of the timed function (no L2 flush between
them) that lasts at least MIN_SPAN_S, because the counter advances in steps of tens of
milliseconds. It measures the whole board, so another process on the GPU adds its energy: env.json
records such processes. Where nvidia-ml-py is missing or the counter is not readable (CPU, older
GPUs, some virtual machines), the figure is None and `energy_note` says why.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

MIN_SPAN_S = 0.5


def _handle(device: torch.device):
    """The NVML handle of `device` (matched by UUID, since CUDA_VISIBLE_DEVICES renumbers devices)."""
    import pynvml

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        found = pynvml.nvmlDeviceGetUUID(handle)
        found = found.decode() if isinstance(found, bytes) else found
        if found.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
            return handle
    raise RuntimeError(f"no NVML device has the UUID of CUDA device {device}")


def counter(device: torch.device) -> tuple[Callable[[], int] | None, str]:
    """A reader of the device's energy counter in mJ, or (None, the reason it cannot be read)."""
    if device.type != "cuda":
        return None, "no energy counter on CPU"
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        handle = _handle(device)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as e:  # noqa: BLE001 - NVML raises its own error types per driver
        return None, f"NVML energy counter not readable: {str(e).splitlines()[0][:120]}"
    return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)), ""


def joules_per_token(fn: Callable[[], object], device: torch.device, tokens_per_call: int, call_ms: float) -> dict:
    """{'joules_per_token': J or None, 'energy_calls': n, 'energy_note': why empty or ''}."""
    read, note = counter(device)
    if read is None:
        return {"joules_per_token": None, "energy_note": note}
    calls = max(1, int(MIN_SPAN_S * 1e3 / max(call_ms, 1e-3)) + 1)
    torch.cuda.synchronize(device)
    start, t0 = read(), time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize(device)
    spent_mj, span_s = read() - start, time.perf_counter() - t0
    if spent_mj <= 0:
        return {"joules_per_token": None, "energy_calls": calls,
                "energy_note": f"the energy counter did not advance over {span_s:.2f} s"}
    return {"joules_per_token": spent_mj / 1e3 / (calls * tokens_per_call), "energy_calls": calls, "energy_note": ""}
