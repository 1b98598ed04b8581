"""Does altbench's timer add overhead? Two checks on a CUDA GPU, printed as a Markdown table.

1. The same op timed by altbench (`altbench.measure.timing.time_calls`) and by
   `triton.testing.do_bench` side by side: target, altbench's median within 2% of do_bench's.
2. Decode through CUDA graphs (`altbench.measure.scenarios.decode`): per-token latency against
   the sum of the device time of the kernels one step launches (torch.profiler over eager steps):
   target, within 1.2x. The gap is launch overhead the graph did not remove.

    python benchmarks/harness_overhead.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F

from altbench import registry
from altbench.measure.scenarios import decode, decode_state
from altbench.measure.timing import time_calls
from altbench.runner.cells import Cell
from altbench.runner.suite import Settings


def ops(device):
    """(name, fn) pairs spanning a launch-bound op to a compute-bound one."""
    def sdpa(L):
        q, k, v = (torch.randn(1, 32, L, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)

    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    x = torch.randn(1 << 24, device=device, dtype=torch.bfloat16)
    return [
        ("add 32 MB (launch-bound)", lambda: x.add(1)),
        ("SDPA causal fwd L=1K", sdpa(1024)),
        ("SDPA causal fwd L=16K", sdpa(16384)),
        ("matmul bf16 4096^3", lambda: a @ a),
    ]


def timer_vs_do_bench(device) -> list[dict]:
    from triton.testing import do_bench

    rows = []
    for name, fn in ops(device):
        ours, theirs = [], []
        for _ in range(3):  # interleave to cancel drift (clocks, temperature)
            ours.append(time_calls(fn, device, reps=200, warmup=25).median)
            theirs.append(do_bench(fn, warmup=25, rep=200, return_mode="median"))
        o, t = statistics.median(ours), statistics.median(theirs)
        rows.append({"op": name, "altbench_ms": o, "do_bench_ms": t, "ratio": o / t, "target": "<= 1.02"})
    return rows


def decode_vs_kernels(device, arch: str, size: str, context: int) -> dict:
    model = registry.build(arch, size, device=device, dtype=torch.bfloat16).eval()
    settings = Settings(reps=200, warmup=10, decode_tokens=200, cuda_graphs=True)
    cell = Cell(arch, size, "torch", "decode", "bfloat16", "cuda", 1, context, settings)
    row = decode(model, cell, torch.device(device), torch.Generator().manual_seed(0))

    ids = torch.randint(0, model.config.vocab_size, (1, min(context, 8193)), device=device)
    with torch.inference_mode():
        state = decode_state(model, ids, context, 0, headroom=64)
        token = ids[:, -1]
        for _ in range(3):
            model.step(token, state)
        torch.cuda.synchronize()
        steps = 10
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                model.step(token, state)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.device_time for e in kernels) / 1e3 / steps
    return {
        "model": f"{arch} {size} bf16, context {context}", "graph_ms_per_token": row["ms_median"],
        "kernel_sum_ms": kernel_ms, "ratio": row["ms_median"] / kernel_ms, "cuda_graphs": row["cuda_graphs"],
        "kernels_per_step": len(kernels) // steps, "target": "<= 1.2",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "harness_overhead.json"))
    args = parser.parse_args()
    device = "cuda"
    timer = timer_vs_do_bench(device)
    print("| op | altbench median ms | do_bench median ms | ratio (target <= 1.02) |\n|---|---|---|---|")
    for r in timer:
        print(f"| {r['op']} | {r['altbench_ms']:.4f} | {r['do_bench_ms']:.4f} | {r['ratio']:.3f} |")
    graphs = []
    for arch in ("transformer", "mamba", "mamba2"):
        try:
            graphs.append(decode_vs_kernels(device, arch, "130m", 4096))
        except Exception as e:  # noqa: BLE001 - report, do not crash the benchmark
            graphs.append({"model": f"{arch} 130m", "error": f"{type(e).__name__}: {e}"})
    print("\n| model | graph ms/token | sum of kernel ms | ratio (target <= 1.2) | kernels/step |\n|---|---|---|---|---|")
    for r in graphs:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error'][:80]} | | | |")
        else:
            print(f"| {r['model']} | {r['graph_ms_per_token']:.4f} | {r['kernel_sum_ms']:.4f} | {r['ratio']:.3f} | {r['kernels_per_step']} |")
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "timer": timer, "decode": graphs}, f, indent=2)


if __name__ == "__main__":
    main()
