"""The device's measured ceilings, once per run: what every figure is read against.

    copy_gbs            device-to-device copy of 1 GiB: (bytes read + bytes written) / time
    matmul_bf16_tflops  bf16 matrix product 8192 x 8192 x 8192: 2 n^3 / time
    launch_us           host time to launch one tiny kernel from eager PyTorch (median of batches of
                        1000 in-place adds on one element): a cell of n kernels launched eagerly
                        cannot take less than n x launch_us, whatever the GPU

Copy and matmul are timed with the same protocol as every cell (measure/timing.py) on random data;
the launch cost with the host clock alone.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from altbench.measure.timing import time_calls


def launch_us(device: torch.device | str, batch: int = 1000, batches: int = 21) -> float:
    """Median host-side microseconds per eager kernel launch (see the module docstring)."""
    device = torch.device(device)
    x = torch.zeros(1, device=device)
    times = []
    for _ in range(batches):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(batch):
            x.add_(1)
        times.append((time.perf_counter() - t0) / batch * 1e6)
    torch.cuda.synchronize(device)
    return float(np.median(times))


def measure(device: str = "cuda") -> dict:
    dev = torch.device(device)
    n_bytes = 1 << 30
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy = time_calls(lambda: dst.copy_(src), dev, reps=20, warmup=3)
    del src, dst
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    mm = time_calls(lambda: a @ b, dev, reps=20, warmup=3)
    return {
        "copy_gbs": 2 * n_bytes / (copy.median / 1e3) / 1e9,
        "matmul_bf16_tflops": 2 * n**3 / (mm.median / 1e3) / 1e12,
        "launch_us": launch_us(dev),
        "device_name": torch.cuda.get_device_name(dev),
    }
