"""The MoE experts' two forms on one layer: the per-expert loop (`experts_ref`) against the grouped
GEMM (`experts_grouped`, torch._grouped_mm), forward and forward+backward.

Default shape: a Mixtral 8x7B layer (Jiang et al. 2024): E = 8 experts, top-2, d = 4096 -> H = 14336,
N = 16K tokens, bf16, routed by a random router so every expert gets tokens (its load is printed).
Before timing, both forms are compared (output and every gradient) with one relative-error helper.
Each row gives the median time, the TFLOP/s of the routed experts (forward: 3 matmuls of d x H per
token and expert used, 2 FLOPs per multiply-add; fwd+bwd: 3x that) and their fraction of the bf16
matmul ceiling measured here (one (N k / E, d) x (d, H) matmul), and the grouped form's speed-up.

    python benchmarks/moe.py                      # on a CUDA GPU
    python benchmarks/moe.py --tokens 512 --d-model 256 --d-expert 512 --dtype float32   # a CPU smoke

Writes a Markdown table to stdout and the rows as JSON to --out, else $OUT/moe.json when OUT is set,
else ./moe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from altbench.models.moe import experts_grouped, experts_ref


def timed(fn, reps: int, device: torch.device) -> float:
    """Median seconds of `fn()` over `reps` calls after one warm-up (CUDA events on a GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--d-model", type=int, default=4096)
    p.add_argument("--d-expert", type=int, default=14336)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None, help="JSON file (default $OUT/moe.json or ./moe.json)")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, a.dtype)
    N, d, H, E, k = a.tokens, a.d_model, a.d_expert, a.experts, a.top_k
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, d, device=device, dtype=dtype, generator=g)
    probs = torch.softmax(torch.randn(N, E, device=device, generator=g), dim=-1)
    w, idx = probs.topk(k, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(dtype)
    gate_up = (torch.randn(E, 2 * H, d, device=device, generator=g) * d**-0.5).to(dtype)
    down = (torch.randn(E, d, H, device=device, generator=g) * H**-0.5).to(dtype)
    dy = torch.randn(N, d, device=device, dtype=dtype, generator=g)
    load = torch.bincount(idx.flatten(), minlength=E)
    print(f"{device} {a.dtype}: N={N} d={d} H={H} E={E} top-{k}; tokens per expert {load.tolist()}, "
          f"max/mean {load.max().item() / load.float().mean().item():.2f}")

    def run(form, backward):
        inputs = [t.detach().requires_grad_(backward) for t in (x, w, gate_up, down)]
        y = form(inputs[0], idx, inputs[1], inputs[2], inputs[3])
        if backward:
            y.backward(dy)
            return [y, *(t.grad for t in inputs)]
        return [y]

    names = ["y", "dx", "dw", "dgate_up", "ddown"]
    for name, ref, out in zip(names, run(experts_ref, True), run(experts_grouped, True)):
        print(f"  check {name}: relative error {rel_err(ref, out):.1e}")

    flops = 3 * 2 * d * H * N * k  # the routed experts' forward
    a_rows = max(1, N * k // E)
    rows, cols = torch.randn(a_rows, d, device=device, dtype=dtype, generator=g), down[0].contiguous()  # (d, H)
    ceiling_s = timed(lambda: rows @ cols, a.reps, device)
    ceiling = 2 * a_rows * d * H / ceiling_s
    print(f"  matmul ceiling ({a_rows} x {d} x {H}): {ceiling / 1e12:.1f} TFLOP/s\n")
    rows = []
    print("| pass | form | ms | TFLOP/s | of ceiling | grouped speed-up |\n|---|---|---|---|---|---|")
    for label, backward, work in (("forward", False, flops), ("fwd+bwd", True, 3 * flops)):
        seconds = {form: timed(lambda: run(fn, backward), a.reps, device)
                   for form, fn in (("loop", experts_ref), ("grouped", experts_grouped))}
        for form, s in seconds.items():
            row = {"pass": label, "form": form, "ms": s * 1e3, "tflops": work / s / 1e12,
                   "of_ceiling": work / s / ceiling, "speedup": seconds["loop"] / s}
            rows.append(row)
            print(f"| {label} | {form} | {row['ms']:.2f} | {row['tflops']:.1f} | {row['of_ceiling']:.1%} | "
                  f"{row['speedup']:.2f}x |")
    out = a.out or os.path.join(os.environ.get("OUT") or ".", "moe.json")
    shape = dict(tokens=N, d_model=d, d_expert=H, experts=E, top_k=k, dtype=a.dtype, device=str(device))
    with open(out, "w") as f:
        json.dump({"argv": sys.argv, "shape": shape, "ceiling_tflops": ceiling / 1e12, "load": load.tolist(),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
