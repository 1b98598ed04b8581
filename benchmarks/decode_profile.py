"""Where a decode step's time goes: per-token time of altbench's decode step on its fast path, the
kernels one step launches and the ten that take the most device time, per architecture.

For each architecture (default: 130m, bf16, batch 1, context 4K) and each compile scope asked for:

1. The model and its state as a `decode` cell builds them (`registry.build` with the backend,
   `scenarios.decode_state`: a real prefill, KV caches extended to the context). The backend sets
   the prefill's kernels and, for mamba and mamba2, the step's: `triton` runs the fused Triton step
   kernels (kernels/selective_step.py, kernels/ssd_step.py), `torch` the compiled PyTorch step.
2. The step on altbench's fast path, as `scenarios.decode` runs it: `fastpath.fast_call` with the
   compile regions of that scope (`fastpath.regions`: each layer, or the whole model) and a CUDA
   graph; timed by `timing.time_calls` (median and 95% interval, no L2 flush, as decode cells).
3. torch.profiler over `--profile-steps` replays of that graph: kernels per step, the device time of
   their sum (against the measured time, the rest is the gaps between kernels) and the top ten kernels
   by device time. Where the profiler sees no kernel inside a graph replay (an old CUPTI), the same
   compiled step is profiled launched without the graph, and the row says so (`profiled`).
4. The memory bound: weights plus state (or KV cache) bytes over the copy bandwidth measured in the
   same run (`measure/ceilings.py`), and the fraction of it reached.

Each (architecture, backend, scope) runs in its own process, so a compile failure, an OOM or a CUDA fault is
that row's `error` and the loop goes on. Prints a Markdown table as it goes and the top kernels of
each row, and writes the rows so far as JSON to `--out` after each row (default `$OUT/decode_profile.json` when OUT is
set, else `./decode_profile.json`).

    python benchmarks/decode_profile.py                                   # 6 architectures, both scopes
    python benchmarks/decode_profile.py --archs mamba,mamba2 --scopes model --context 2048
    python benchmarks/decode_profile.py --archs mamba,mamba2 --backends torch,triton   # fused step kernels or not
    python benchmarks/decode_profile.py --device cpu --size tiny --context 64 --dtype float32 --backends torch  # smoke

On a CPU (a smoke check of the script, no GPU figure) there is no graph; inductor's C++ kernels are
counted as the profiler's leaf events.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import traceback
from collections import defaultdict

ARCHS = "transformer,mamba,mamba2,retnet,rwkv7,gla"
TOP = 10


def _backends(arch: str, asked: list[str]) -> list[str]:
    """The backends of `asked` that implement `arch`; "fastest" is the first of registry.FASTEST that
    implements it and is installed (a suite's `backend_choice = "fastest"`)."""
    from altbench import registry

    own = registry.backends_of(arch)
    fastest = next(b for b in registry.FASTEST if b in own and registry.backend_installed(b))
    return list(dict.fromkeys(fastest if b == "fastest" else b for b in asked if b == "fastest" or b in own))


def _kernels(prof, device_type: str) -> list:
    """The profiled kernels: CUDA kernel events on a GPU; leaf CPU events (inductor's C++ kernels,
    extern calls) on a CPU."""
    import torch

    events = list(prof.events())
    if device_type == "cuda":
        return [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    return [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and not e.cpu_children]


def _profile(call, steps: int, device) -> list:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    for _ in range(3):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return _kernels(prof, device.type)


def _summary(kernels: list, steps: int, device_type: str) -> dict:
    """Kernels per step, their summed time per step (ms) and the top ones by time."""
    per_name = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        us = e.device_time if device_type == "cuda" else e.cpu_time
        per_name[e.name][0] += 1
        per_name[e.name][1] += us
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:TOP]
    total_us = sum(us for _, us in per_name.values())
    return {
        "kernels_per_step": len(kernels) / steps,
        "kernel_ms_per_step": total_us / steps / 1e3,
        "top_kernels": [{"name": name, "calls_per_step": n / steps, "us_per_step": us / steps,
                         "share": us / total_us if total_us else None} for name, (n, us) in top],
    }


def measure(arch: str, backend: str, args: dict, scope: str, copy_gbs: float | None) -> dict:
    """One row: inside its own worker process."""
    import torch

    from altbench import registry
    from altbench.measure.fastpath import fast_call, regions
    from altbench.measure.scenarios import DECODE_PREFILL, _graphable, decode_state, rewinder
    from altbench.measure.timing import time_calls

    device = torch.device(args["device"])
    row = {"arch": arch, "size": args["size"], "backend": backend, "compile_scope": scope, "dtype": args["dtype"],
           "batch": args["batch"], "context": args["context"], "device": device.type}
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(args["context"] * 1_000_003 + args["batch"])
    model = registry.build(arch, args["size"], device=device, dtype=getattr(torch, args["dtype"]), backend=backend).eval()
    row["params"] = model.params()
    context, batch = args["context"], args["batch"]
    ids = torch.randint(0, model.config.vocab_size, (batch, min(context, DECODE_PREFILL + 1)), generator=generator)
    ids = ids.to(device)
    with torch.inference_mode():
        state = decode_state(model, ids, context, 0, headroom=8)
        rewind = rewinder(state)
        token = ids[:, -1]
        fast = fast_call(lambda tokens, state: model.step(tokens, state), (token, state), device,
                         compile=regions(model, "step", scope) if args["compile"] else None,
                         graphs=_graphable(state), rewind=rewind)
        row.update(fast.row())
        timing = time_calls(fast.call, device, args["reps"], args["warmup"], flush_l2=False)
        low, high = timing.interval()
        row.update({"ms_per_token": timing.median, "ms_ci_low": low, "ms_ci_high": high, "reps": len(timing.samples_ms)})

        steps = args["profile_steps"]
        kernels, row["profiled"] = _profile(fast.call, steps, device), "graph replay" if fast.cuda_graphs else "launched"
        if not kernels and fast.cuda_graphs:  # the profiler did not see inside the graph

            def launched():
                model.step(token, state)
                rewind()

            kernels, row["profiled"] = _profile(launched, steps, device), "launched (no kernels seen in the graph replay)"
    row.update(_summary(kernels, steps, device.type))
    moved = model.params() * torch.finfo(model.embed.weight.dtype).bits // 8 + model.state_bytes(
        batch, context, model.embed.weight.dtype)
    row["bytes_per_token"] = moved
    if copy_gbs:
        row["memory_bound_ms"] = moved / (copy_gbs * 1e9) * 1e3
        row["bound_frac"] = row["memory_bound_ms"] / row["ms_per_token"]
    return row


def _worker(arch: str, backend: str, args: dict, scope: str, copy_gbs: float | None) -> dict:
    try:
        return {"status": "ok", **measure(arch, backend, args, scope, copy_gbs)}
    except BaseException as e:  # noqa: BLE001 - every failure is this row's error
        return {"arch": arch, "backend": backend, "compile_scope": scope, "status": "error",
                "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300],
                "traceback": traceback.format_exc()}


def _ceilings(device: str) -> dict:
    if device != "cuda":
        return {}
    from altbench.measure import ceilings

    return ceilings.measure(device)


def _fmt(x, spec=".3f") -> str:
    return "" if x is None else format(x, spec)


def _print_row(row: dict) -> None:
    if row["status"] != "ok":
        print(f"| {row['arch']} | {row['backend']} | {row['compile_scope']} | error: {row['error'][:120]} | | | | | |",
              flush=True)
        return
    ci = f"{_fmt(row['ms_ci_low'])}-{_fmt(row['ms_ci_high'])}" if row["ms_ci_low"] is not None else ""
    print(f"| {row['arch']} | {row['backend']} | {row['compile_scope'] if row['compiled'] else 'eager'} "
          f"| {_fmt(row['ms_per_token'])} | {ci} | {_fmt(row['kernels_per_step'], '.0f')} "
          f"| {_fmt(row['kernel_ms_per_step'])} | {_fmt(row.get('memory_bound_ms'))} "
          f"| {_fmt(row['compile_ms'] and row['compile_ms'] / 1e3, '.1f')} |", flush=True)


def print_top(title: str, top_kernels: list, unit: str, file=None) -> None:
    """A Markdown table of `_summary`'s top kernels under `title`."""
    print(f"\n{title}: top {TOP} kernels by {unit} time per call\n", file=file)
    print("| kernel | calls / step | us / step | share |\n|---|---|---|---|", file=file)
    for k in top_kernels:
        print(f"| `{k['name'][:90]}` | {k['calls_per_step']:.0f} | {k['us_per_step']:.1f} | {_fmt(k['share'], '.0%')} |",
              file=file, flush=True)


def _print_top(row: dict) -> None:
    unit = "device" if row.get("device") == "cuda" else "CPU"
    print_top(f"{row['arch']} ({row['backend']}, {row['compile_scope']}), {row['profiled']}", row["top_kernels"], unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=ARCHS, help=f"comma-separated (default {ARCHS})")
    parser.add_argument("--size", default="130m")
    parser.add_argument("--context", type=int, default=4096, help="tokens before the timed step")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--backends", default="fastest",
                        help="comma-separated backends ('fastest': the suites' choice); each that implements an arch is a row")
    parser.add_argument("--scopes", default="layer,model", help="compile scopes, comma-separated: layer, model")
    parser.add_argument("--eager", action="store_true", help="also a row of the step uncompiled (graph only)")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "decode_profile.json"))
    args = parser.parse_args()
    scopes = [s for s in args.scopes.split(",") if s]
    bad = [s for s in scopes if s not in ("layer", "model")]
    if bad:
        sys.exit(f"--scopes: unknown scope '{bad[0]}'; give layer, model or both")

    import torch

    ceilings = _ceilings(args.device)
    copy_gbs = ceilings.get("copy_gbs")
    common = {k: getattr(args, k) for k in ("size", "context", "batch", "dtype", "reps", "warmup", "profile_steps",
                                            "device")}
    asked = [b for b in args.backends.split(",") if b]
    runs = []
    for arch in (a for a in args.archs.split(",") if a):
        try:
            backends = _backends(arch, asked)
            if not backends:
                raise ValueError(f"none of the backends {', '.join(asked)} implements {arch}")
        except Exception as e:  # noqa: BLE001 - an unknown architecture is its row's error
            backends = []
            runs.append((arch, ",".join(asked), "", False, f"{type(e).__name__}: {e}"))
        for backend in backends:
            runs += [(arch, backend, scope, True, None) for scope in scopes]
            runs += [(arch, backend, "eager", False, None)] if args.eager else []
    print(f"decode {args.size} {args.dtype} batch {args.batch} context {args.context} on "
          f"{ceilings.get('device_name', args.device)}, torch {torch.__version__}"
          + (f", copy {copy_gbs:.0f} GB/s" if copy_gbs else ""))
    print("\n| arch | backend | compile scope | ms / token | 95% CI | kernels / step | kernel ms / step "
          "| memory bound ms | compile s |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []

    def save() -> None:  # after every row, so a run cut off by a time limit keeps what it measured
        with open(args.out, "w") as f:
            json.dump({"ceilings": ceilings, "torch": torch.__version__, "settings": vars(args), "rows": rows}, f,
                      indent=2)

    context = mp.get_context("spawn")  # no CUDA context inherited; a fault costs one row
    for arch, backend, scope, compiled, error in runs:
        if error:
            row = {"arch": arch, "backend": backend, "compile_scope": scope, "status": "error", "error": error}
            rows.append(row)
            _print_row(row)
            save()
            continue
        job = {**common, "compile": compiled}
        try:
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                row = pool.submit(_worker, arch, backend, job, scope, copy_gbs).result()
        except Exception as e:  # noqa: BLE001 - a worker that died (segfault, killed) is an error row
            row = {"arch": arch, "backend": backend, "compile_scope": scope, "status": "error",
                   "error": f"worker died: {type(e).__name__}: {e}"}
        rows.append(row)
        _print_row(row)
        save()
        if row["status"] == "ok":
            _print_top(row)
    save()
    print(f"\nrows written to {args.out}")


if __name__ == "__main__":
    main()
