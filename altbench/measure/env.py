"""What a result depends on besides the code: hardware, driver, versions, commit, command line.

Captured by the parent process once per run into `<run>/env.json`, without creating a CUDA
context (nvidia-smi for the GPU facts), so the parent never holds device memory. Device ceilings
(copy bandwidth, bf16 matmul) are measured in a worker and added by the runner.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = (
    "torch", "triton", "transformers", "lm_eval", "flash-linear-attention", "fla-core", "mamba-ssm",
    "causal-conv1d", "numpy", "pandas", "scipy", "altbench",
)


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The host CPU's model name: launch-bound cells (short sequences, eager decode) run at its speed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict | None:
    """GPU facts from nvidia-smi (None where there is no NVIDIA GPU)."""
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    out = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    if not out:
        return None
    gpus = [[f.strip() for f in line.split(",")] for line in out.splitlines()]
    name, driver, mem_mib, sm_mhz, mem_mhz, power = gpus[0]
    cuda = _run(["nvidia-smi"])
    cuda_version = None
    if cuda and "CUDA Version:" in cuda:
        cuda_version = cuda.split("CUDA Version:")[1].split()[0]
    return {
        "name": name, "driver": driver, "cuda": cuda_version, "count": len(gpus),
        "memory_bytes": int(float(mem_mib)) << 20, "max_sm_clock_mhz": sm_mhz, "max_mem_clock_mhz": mem_mhz,
        "power_limit_w": power,
    }


def triton_cache() -> dict | None:
    """Where Triton keeps compiled kernels (and, as workers set it, autotuning results) and how many
    entries it held when the run started: a kernel found there loads instead of compiling, so a
    cell's `first_call_ms` is a compile-and-autotune time only with an empty cache."""
    try:
        from triton import knobs
    except ImportError:
        return None
    path = Path(knobs.cache.dir)
    return {"dir": str(path), "entries": sum(1 for _ in path.iterdir()) if path.is_dir() else 0}


def inductor_cache() -> dict:
    """Where torch.compile's inductor keeps compiled graphs and autotuning results, and how many
    entries it held at start: with a warm cache a cell's `compile_ms` is mostly a cache load."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    path = Path(cache_dir())
    return {"dir": str(path), "entries": sum(1 for _ in path.rglob("*")) if path.is_dir() else 0}


def gpu_processes() -> list[str]:
    """Other processes using the GPU now (they would distort timings)."""
    out = _run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"])
    return [line.strip() for line in out.splitlines() if line.strip()] if out else []


def capture(command: list[str], suite: str) -> dict:
    repo = Path(__file__).resolve().parents[2]
    # A copied checkout (e.g. on a GPU machine, with no .git or a stale one) names its commit in
    # ALTBENCH_GIT_COMMIT; the copier vouches for it, so it wins and the tree counts as clean.
    commit = os.environ.get("ALTBENCH_GIT_COMMIT")
    dirty = None if commit else _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    commit = commit or _run(["git", "rev-parse", "HEAD"], cwd=repo)
    import torch

    return {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "suite": suite,
        "command": " ".join(command),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "packages": {name: v for name in PACKAGES if (v := _version(name))},
        "git_commit": commit,
        "git_dirty": bool(dirty) if commit else None,
        "gpu": gpu_info(),
        "gpu_busy": gpu_processes(),
        "triton_cache": triton_cache(),
        "inductor_cache": inductor_cache(),
        "ceilings": None,
    }
