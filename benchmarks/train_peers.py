"""Training step of each architecture at 130m: altbench's fastest path beside the best public
implementation of the same architecture, in one run on one CUDA GPU.

For each architecture and length L (default 4K and 16K tokens, batch 1, bf16 autocast over fp32
weights), times one full training step -- forward, next-token cross-entropy on fp32 logits, backward,
AdamW step -- of

    ours   altbench's model as `altbench run` measures it: `registry.build` on the backend that
           backend_choice = "fastest" resolves for a train step (`runner.suite.first_usable` over
           `registry.FASTEST`), stepped by `measure.scenarios.training_step`, the train_step cell's step
    peer   the public model of the same configuration (width, depth, heads, state sizes, vocabulary and
           tied embeddings of altbench's config), stepped by the same `training_step`:
             rwkv7, gla, retnet  fla's RWKV7ForCausalLM, GLAForCausalLM, RetNetForCausalLM (RetNet's FFN:
                                 fla's SwiGLU 2/3 as wide as altbench's GeLU MLP, the same parameters and FLOPs)
             mamba, mamba2       mamba_ssm's MambaLMHeadModel, ssm_cfg layer "Mamba1" / "Mamba2" (Mamba-1
                                 needs the CUDA extension selective_scan_cuda: without it a `skipped` row
                                 names it; Mamba-2 takes its fused mem-eff path only with causal_conv1d)
             xlstm               the xlstm package's xLSTMLarge (NX-AI's xLSTM 7B model) on mlstm_kernels'
                                 chunkwise--triton_xl_chunk kernel; without xlstm, altbench's xLSTM with its
                                 mLSTM cell on mlstm_kernels (its `mlstm_kernels` backend), as the row says

The same loss and optimiser for both, so the comparison is the models', not the loss functions'. Each
row: median ms over altbench's timer (`measure.timing.time_calls`: CUDA events, L2 flushed, first call
-- compile and autotune -- timed apart), tokens/s, the ratio ours/peer (tokens/s) on the peer's row,
analytic FLOPs and bytes of altbench's model (`scenarios.training_work`: 3 x prefill_flops) for both,
TFLOP/s, roofline fraction (`measure.roofline.bounds`) against the copy bandwidth and bf16 matmul
ceilings measured at the start of the run by benchmarks/kernels.py's `ceilings` worker, and peak
allocated memory. Target (issue 16): ours >= 0.8x the peer's tokens/s.

Every (arch, implementation) runs in its own worker process: an import error is a `not installed`
row, a NotImplementedError a `skipped` row, an out-of-memory an `oom` row, anything else an `error`
row; after a CUDA fault a fresh worker takes the remaining lengths.

    python benchmarks/train_peers.py [--archs rwkv7,gla,...] [--lengths 4K,16K] [--quick] [--profile N] [--out FILE]

With --profile N, each row also profiles N steps after its timing (decode_profile.py's profiler): the
kernels one step launches, their summed device time and the ten that take the most, printed under
the row, so a ratio below the target comes with where ours and the peer's step spend their time.

Prints a Markdown table as rows arrive and a summary at the end; writes every row as JSON to --out,
else $OUT/train_peers.json when OUT is set, else ./train_peers.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = ["rwkv7", "gla", "retnet", "mamba", "mamba2", "xlstm"]
IMPLS = ["ours", "peer"]
LENGTHS = "4K,16K"
DTYPE = "bfloat16"
TARGET = 0.8  # ours / peer tokens/s the issue asks for


def _load_benchmark(name: str):
    """benchmarks/<name>.py as a module, under a name that cannot shadow another top-level package (Hugging
    Face's `kernels`)."""
    spec = importlib.util.spec_from_file_location(f"altbench_benchmark_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kb = _load_benchmark("kernels")  # its ceilings worker, ROW protocol and length parsing
dp = _load_benchmark("decode_profile")  # its profiler: kernels per call and the top ones by device time


# --- peers: the public model of each architecture at altbench's configuration ---------------------------
# Each takes altbench's config and size name and returns (model, logits_of(model, ids), label).


def _hf_logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def _mamba_ssm_logits(model, ids):
    return model(ids).logits


def _first_output(model, ids):
    return model(ids)[0]


def fla_rwkv7(c, size):
    from fla.models import RWKV7ForCausalLM

    from altbench.models.rwkv7 import to_fla_config

    return RWKV7ForCausalLM(to_fla_config(c)), _hf_logits, "fla RWKV7ForCausalLM"


def fla_gla(c, size):
    from fla.models import GLAConfig, GLAForCausalLM

    if (c.gate_rank, c.gate_temperature) != (16, 16.0):
        raise NotImplementedError("fla's GLAForCausalLM fixes the gate's rank and temperature at 16")
    config = GLAConfig(
        hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_heads=c.n_heads, expand_k=c.expand_k,
        expand_v=c.expand_v, intermediate_size=c.d_hidden, vocab_size=c.vocab_size, norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings, use_short_conv=False, use_output_gate=True, fuse_cross_entropy=False,
    )
    return GLAForCausalLM(config), _hf_logits, "fla GLAForCausalLM"


def fla_retnet(c, size):
    from fla.models import RetNetConfig, RetNetForCausalLM

    config = RetNetConfig(
        hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_heads=c.n_heads, expand_k=1.0,
        expand_v=float(c.value_factor), intermediate_size=2 * c.d_hidden // 3, vocab_size=c.vocab_size,
        norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings, use_output_gate=True, fuse_cross_entropy=False,
    )  # key width d / H per head as ours; SwiGLU 2/3 as wide as our GeLU MLP: the same parameters and FLOPs
    return RetNetForCausalLM(config), _hf_logits, f"fla RetNetForCausalLM (SwiGLU {2 * c.d_hidden // 3})"


def _imports(module: str) -> bool:
    """Whether `module` imports (not merely whether it is on the path)."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _mamba_ssm(c, layer: str):
    from mamba_ssm.models.config_mamba import MambaConfig

    if importlib.util.find_spec("selective_scan_cuda") is None:
        if layer == "Mamba1":
            raise NotImplementedError("mamba_ssm is installed without its CUDA extension selective_scan_cuda, "
                                      "which Mamba-1's scan needs (build it: benchmarks/README.md)")
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")  # imported, unused by Mamba-2
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    conv = _imports("causal_conv1d")  # its package can be present without its compiled causal_conv1d_cuda
    ssm = {"layer": layer, "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand}
    if layer == "Mamba2":
        ssm.update(headdim=c.head_dim, ngroups=c.n_groups, chunk_size=c.chunk_size, use_mem_eff_path=conv)
    elif c.dt_rank:
        ssm["dt_rank"] = c.dt_rank
    config = MambaConfig(d_model=c.d_model, n_layer=c.n_layers, d_intermediate=0, vocab_size=c.vocab_size, ssm_cfg=ssm,
                         rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8,
                         tie_embeddings=c.tie_embeddings)
    label = f"mamba_ssm MambaLMHeadModel ({layer}, causal_conv1d {'yes' if conv else 'no'})"
    return MambaLMHeadModel(config), _mamba_ssm_logits, label


def mamba_ssm_mamba(c, size):
    return _mamba_ssm(c, "Mamba1")


def mamba_ssm_mamba2(c, size):
    return _mamba_ssm(c, "Mamba2")


def xlstm_large(c, size):
    from altbench import registry
    from altbench.models.xlstm import KERNEL_CHUNK

    if c.slstm_at:
        raise NotImplementedError("xLSTMLarge has mLSTM blocks only; this config has sLSTM blocks")
    try:
        from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig
    except ImportError:
        if importlib.util.find_spec("mlstm_kernels") is None:
            raise ImportError("neither xlstm nor mlstm_kernels is installed", name="xlstm") from None
        model = registry.build("xlstm", size, backend="mlstm_kernels")
        return model, _first_output, "altbench xLSTM, mLSTM cell from mlstm_kernels (xlstm not installed)"
    # xLSTMLarge rounds d * factor down where altbench (and the published sizes) round up: give it our width
    d_ffn = registry.build("xlstm", size, device="meta").layers[0].mlp.d_hidden
    config = xLSTMLargeConfig(
        embedding_dim=c.d_model, num_heads=c.n_heads, num_blocks=c.n_layers, vocab_size=c.vocab_size, use_bias=False,
        norm_eps=c.norm_eps, qk_dim_factor=c.qk_dim_factor, v_dim_factor=c.v_dim_factor,
        chunkwise_kernel="chunkwise--triton_xl_chunk", mode="train", chunk_size=KERNEL_CHUNK,
        return_last_states=True,  # xlstm 2.0.6's layers unpack (h, state) whatever this says
        autocast_kernel_dtype=DTYPE, eps=c.eps, ffn_proj_factor=d_ffn / c.d_model,
        ffn_round_up_to_multiple_of=c.ffn_multiple_of, gate_soft_cap=c.gate_soft_cap,
        output_logit_soft_cap=c.logit_soft_cap, weight_mode="single",
    )
    model = xLSTMLarge(config)
    if c.tie_embeddings:
        model.lm_head.weight = model.embedding.weight
    return model, _first_output, "xlstm xLSTMLarge (mlstm_kernels chunkwise--triton_xl_chunk)"


PEERS = {  # arch -> (what the row calls it before it is built, builder)
    "rwkv7": ("fla RWKV7ForCausalLM", fla_rwkv7),
    "gla": ("fla GLAForCausalLM", fla_gla),
    "retnet": ("fla RetNetForCausalLM", fla_retnet),
    "mamba": ("mamba_ssm MambaLMHeadModel (Mamba1)", mamba_ssm_mamba),
    "mamba2": ("mamba_ssm MambaLMHeadModel (Mamba2)", mamba_ssm_mamba2),
    "xlstm": ("xlstm xLSTMLarge", xlstm_large),
}


# --- worker side (imports torch) ------------------------------------------------------------------------


def ours_backend(arch: str, pinned: str | None = None) -> str:
    """The backend `altbench run` takes for `arch`'s train step under backend_choice = "fastest"."""
    from altbench import registry
    from altbench.runner.suite import first_usable

    return pinned or first_usable(list(registry.FASTEST), arch, "train_step")[0]


def measure(arch: str, impl: str, L: int, size: str = "130m", device: str = "cuda", backend: str | None = None,
            reps: int = 10, warmup: int = 2, budget_s: float = 60.0, profile: int = 0) -> dict:
    """One row: the training step of `impl` ("ours" or "peer") for `arch` at L tokens, or why not; with
    `profile` > 0, after the timing, that many more steps under torch.profiler give the kernels per step,
    their summed device time and the top ones (`top_kernels`)."""
    import torch

    from altbench import registry
    from altbench.measure import scenarios
    from altbench.measure.timing import time_calls
    from altbench.models.base import next_token_loss

    row = dict(kind="cell", arch=arch, L=L, impl=impl, size=size, dtype=DTYPE, batch=1)
    try:
        if impl == "ours":
            backend = ours_backend(arch, backend)
            if backend == "triton":
                kb.import_ours()  # altbench.kernels, also from a checkout that was never pip-installed
            row["implementation"] = f"altbench ({backend})"
            model = registry.build(arch, size, backend=backend)
            logits_of = _first_output  # altbench's models return (logits, state)
        else:
            row["implementation"], build = PEERS[arch]
            torch.manual_seed(0)
            model, logits_of, row["implementation"] = build(registry.config(arch, size), size)
        row.update(scenarios.training_work(registry.build(arch, size, device="meta"), 1, L))  # ours, for both
        row["params"] = sum(p.numel() for p in model.parameters())
        model = model.to(device)
        ids = torch.randint(0, registry.config(arch, size).vocab_size, (1, L),
                            generator=torch.Generator().manual_seed(L)).to(device)
        if device.startswith("cuda"):
            row["gpu"] = torch.cuda.get_device_name(device)
            torch.cuda.reset_peak_memory_stats(device)
        step = scenarios.training_step(model, ids, getattr(torch, DTYPE), lambda m, ids: next_token_loss(logits_of(m, ids), ids))
        timing = time_calls(step, device, reps, warmup, budget_s=budget_s)
        ms = timing.median
        row.update(status="ok", ms=ms, ms_ci=list(timing.interval()), reps=len(timing.samples_ms),
                   first_call_s=timing.first_call_ms / 1e3, tokens_per_s=L / (ms / 1e3),
                   tflop_s=row["flops"] / (ms / 1e3) / 1e12)
        if device.startswith("cuda"):
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if profile:
            dev = torch.device(device)
            row.update(dp._summary(dp._profile(step, profile, dev), profile, dev.type))
    except ImportError as e:
        row.update(status="not installed", message=f"{type(e).__name__}: {e}"[:300])
    except NotImplementedError as e:
        row.update(status="skipped", message=str(e)[:300])
    except torch.OutOfMemoryError as e:
        row.update(status="oom", message=str(e).splitlines()[0][:300])
    except Exception as e:  # noqa: BLE001 - every failure is a row
        row.update(status="error", message=f"{type(e).__name__}: {e}".splitlines()[0][:300])
    return row


def worker(arch: str, impl: str, lengths: list[int], args) -> int:
    """One ROW line per length; returns 3 after a CUDA fault (the parent starts a fresh worker)."""
    import gc

    import torch

    for L in lengths:
        row = measure(arch, impl, L, args.size, args.device, args.ours_backend, args.reps, args.warmup, args.budget,
                      args.profile)
        kb.emit(**row)
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        if row["status"] == "error" and kb.cuda_fault(row["message"]):
            return 3
    return 0


# --- parent side (no CUDA) ------------------------------------------------------------------------------


def run_worker(arch: str, impl: str, lengths: list[int], args, on_row) -> None:
    """Rows of (arch, impl), each passed to `on_row` as it arrives, through as many workers as faults take."""
    todo = list(lengths)
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{arch}:{impl}",
               "--lengths", ",".join(map(str, todo)), "--size", args.size, "--device", args.device,
               "--reps", str(args.reps), "--warmup", str(args.warmup), "--budget", str(args.budget),
               "--profile", str(args.profile)]
        cmd += ["--ours-backend", args.ours_backend] if args.ours_backend else []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(args.timeout, proc.kill)
        timer.start()
        tail = []
        for line in proc.stdout:
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                todo.remove(row["L"])
                on_row(row)
            elif line.strip():
                tail = (tail + [line.rstrip()])[-20:]
        rc = proc.wait()
        timer.cancel()
        if rc in (0, 3) or not todo:
            continue
        L = todo.pop(0)  # died without its row: the length it was on takes the blame
        message = f"timed out after {args.timeout} s" if rc in (-9, 137) else kb._last_line("\n".join(tail), rc)
        on_row(dict(kind="cell", arch=arch, L=L, impl=impl, status="error", message=message))


def ceilings_of(rows: list[dict]) -> dict:
    """benchmarks/kernels.py's ceiling rows as measure/roofline.py's ceilings (copy GB/s, bf16 TFLOP/s)."""
    by_op = {r["op"]: r for r in rows if r.get("kind") == "ceiling"}
    out = {}
    if "copy 1 GiB" in by_op:
        out["copy_gbs"] = by_op["copy 1 GiB"]["copy_tb_s"] * 1e3
    if "matmul bf16 8192^3" in by_op:
        out["matmul_bf16_tflops"] = by_op["matmul bf16 8192^3"]["matmul_tflop_s"]
    return out


def complete(row: dict, rows: list[dict], ceilings: dict) -> dict:
    """The row with its roofline fraction and, on a peer's row, ours/peer tokens/s at the same (arch, L)."""
    from altbench.measure.roofline import bounds

    if row["status"] != "ok":
        return row
    row.update(bounds({"status": "ok", "device": "cuda", "ms_median": row["ms"], "flops": row["flops"],
                       "bytes_moved": row["bytes_moved"]}, ceilings))
    ours = next((r for r in rows if r["impl"] == "ours" and r["arch"] == row["arch"] and r["L"] == row["L"]), None)
    if row["impl"] == "peer" and ours is not None and ours["status"] == "ok":
        row["ratio"] = ours["tokens_per_s"] / row["tokens_per_s"]
    return row


HEADER = ("| arch | L | implementation | status | ms | tokens/s | ours/peer | TFLOP/s | roofline | first call s "
          "| peak GiB | params |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_row(r: dict) -> str:
    head = f"| {r['arch']} | {kb.fmt_length(r['L'])} | {r.get('implementation', r['impl'])} |"
    if r["status"] != "ok":
        return head + f" {r['status']}: {r.get('message', '')} |" + " – |" * 8
    return head + (
        f" ok | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {_num(r.get('ratio'), '.2f')} | {r['tflop_s']:.1f} | "
        f"{_num(r.get('roofline_frac'), '.1%')} | {r['first_call_s']:.1f} | {_num(r.get('peak_mem_gib'), '.1f')} | "
        f"{r['params'] / 1e6:.1f}M |"
    )


def summary(rows: list[dict]) -> list[dict]:
    """Per (arch, L): ours beside the fastest peer row, the ratio and whether it reaches TARGET."""
    out = []
    for arch, L in dict.fromkeys((r["arch"], r["L"]) for r in rows):
        ours = next((r for r in rows if (r["arch"], r["L"], r["impl"]) == (arch, L, "ours")), None)
        peers = [r for r in rows if (r["arch"], r["L"], r["impl"]) == (arch, L, "peer") and r["status"] == "ok"]
        peer = max(peers, key=lambda r: r["tokens_per_s"], default=None)
        ok = ours is not None and ours["status"] == "ok"
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"] if ok and peer else None
        out.append(dict(arch=arch, L=L, ours=ours.get("implementation", "ours") if ours else None,
                        ours_status=ours["status"] if ours else None,
                        ours_tokens_per_s=ours["tokens_per_s"] if ok else None,
                        ours_roofline=ours.get("roofline_frac") if ok else None,
                        peer=peer["implementation"] if peer else None,
                        peer_tokens_per_s=peer["tokens_per_s"] if peer else None,
                        peer_roofline=peer.get("roofline_frac") if peer else None,
                        ratio=ratio, reached=None if ratio is None else ratio >= TARGET))
    return out


def summary_markdown(items: list[dict]) -> str:
    lines = [f"Summary: ours / peer tokens/s, target >= {TARGET} (bf16 autocast, batch 1):", "",
             "| arch | L | ours | tokens/s | roofline | peer | tokens/s | roofline | ours/peer | reached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in items:
        lines.append(
            f"| {s['arch']} | {kb.fmt_length(s['L'])} | {s['ours'] or '–'} | "
            f"{s['ours_status'] if s['ours_status'] not in ('ok', None) else _num(s['ours_tokens_per_s'], ',.0f')} | "
            f"{_num(s['ours_roofline'], '.1%')} | {s['peer'] or '–'} | {_num(s['peer_tokens_per_s'], ',.0f')} | "
            f"{_num(s['peer_roofline'], '.1%')} | {_num(s['ratio'], '.2f')} | "
            f"{'–' if s['reached'] is None else 'yes' if s['reached'] else 'no'} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated subset of {', '.join(ARCHS)}")
    ap.add_argument("--impls", default=",".join(IMPLS), help="ours, peer or both")
    ap.add_argument("--lengths", default=LENGTHS, help="comma-separated, K = 1024 (default 4K,16K)")
    ap.add_argument("--size", default="130m", help="altbench size name; the peer takes the same configuration")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ours-backend", default=None, help="pin ours to this backend (default: the fastest installed)")
    ap.add_argument("--reps", type=int, default=10, help="timed steps per cell (fewer when --budget runs out, >= 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of timed steps per cell")
    ap.add_argument("--quick", action="store_true", help="3 reps, 1 warm-up step, 20 s per cell")
    ap.add_argument("--profile", type=int, default=0,
                    help="profile this many steps after the timing: kernels per step and the top ten by device time")
    ap.add_argument("--timeout", type=int, default=540, help="seconds per worker process")
    ap.add_argument("--out", default=None, help="JSON file (default $OUT/train_peers.json or ./train_peers.json)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.budget = 3, 1, 20.0
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    args.lengths = [kb.parse_length(s) for s in args.lengths.split(",") if s.strip()]
    for key, given, known in (("--archs", args.archs, ARCHS), ("--impls", args.impls, IMPLS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            ap.error(f"{key}: unknown {unknown}; choose from {', '.join(known)}")
    return args


def main(argv=None) -> int:
    sys.path.insert(0, os.path.dirname(HERE))  # altbench from this checkout
    args = parse_args(argv)
    if args.worker:
        arch, impl = args.worker.split(":")
        try:
            return worker(arch, impl, args.lengths, args)
        except Exception:  # noqa: BLE001 - the parent turns the traceback's last line into a row
            traceback.print_exc()
            return 1

    ceiling_rows = kb.run_op("ceilings", [], args.reps <= 3, args.timeout) if args.device.startswith("cuda") else []
    ceilings = ceilings_of(ceiling_rows)
    print(f"Ceilings: {json.dumps(ceilings) if ceilings else 'not measured'}\n\n{HEADER}", flush=True)
    rows: list[dict] = []

    def on_row(row):
        rows.append(complete(row, rows, ceilings))
        print(markdown_row(row), flush=True)
        if row.get("top_kernels"):
            dp.print_top(f"{row['arch']} {kb.fmt_length(row['L'])} {row['implementation']}: {row['kernels_per_step']:.0f} "
                         f"kernels, {row['kernel_ms_per_step']:.1f} ms of kernel time per step", row["top_kernels"],
                         "device" if args.device.startswith("cuda") else "CPU", file=sys.stderr)

    for arch in args.archs:
        for impl in args.impls:
            t = time.time()
            run_worker(arch, impl, args.lengths, args, on_row)
            print(f"[{arch} {impl}: {time.time() - t:.0f} s]", file=sys.stderr, flush=True)
    items = summary(rows)
    print("\n" + summary_markdown(items))
    out = args.out or os.path.join(os.environ.get("OUT") or ".", "train_peers.json")
    with open(out, "w") as f:
        json.dump({"argv": sys.argv, "ceilings": ceilings, "ceiling_rows": ceiling_rows, "rows": rows, "summary": items},
                  f, indent=1)
    print(f"\nrows written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
