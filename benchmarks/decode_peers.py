"""Decode against the official implementation, in one process on one GPU: mamba_ssm's
`MambaLMHeadModel.generate(cg=True)` and altbench's Mamba-2 decode cell, same configuration.

mamba_ssm's per-token time is the difference of two generations after the same 1K-token prompt,
(t(576 new tokens) - t(64 new tokens)) / 512, each the median of three runs after one that
(re)captures its CUDA graph. altbench's is its `decode` cell (compiled step replayed from a CUDA
graph; measure/scenarios.py) at context 1024. Target (issue "Measure the architecture"): altbench's
per-token time <= 0.8x mamba_ssm's.

mamba_ssm runs without its CUDA extensions: its step is Triton (`selective_state_update`) and its
convolution update falls back to PyTorch when causal_conv1d is absent; a stand-in module takes the
place of `selective_scan_cuda`, which only Mamba-1's prefill needs.

    PYTHONPATH=/tmp/site:$PWD/.whl/mamba_src python3 benchmarks/decode_peers.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

import torch

from altbench.runner.cells import Cell
from altbench.runner.suite import Settings
from altbench.runner.worker import measure_cell

PROMPT, SHORT, LONG = 1024, 64, 576


def mamba_ssm_ms_per_token(d_model: int = 768, n_layers: int = 24, vocab: int = 50280) -> dict:
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    config = MambaConfig(d_model=d_model, n_layer=n_layers, vocab_size=vocab,
                         ssm_cfg={"layer": "Mamba2", "use_mem_eff_path": False}, rms_norm=True,
                         residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=16)
    model = MambaLMHeadModel(config, device="cuda", dtype=torch.bfloat16).eval()
    prompt = torch.randint(0, vocab, (1, PROMPT), device="cuda")

    def generate(new: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompt, max_length=PROMPT + new, cg=True, top_k=1, return_dict_in_generate=True)
        torch.cuda.synchronize()
        assert out.sequences.shape[1] == PROMPT + new
        return (time.perf_counter() - t0) * 1e3

    times = {}
    for new in (SHORT, LONG):
        runs = [generate(new) for _ in range(4)]  # the first (re)captures the graph for this length
        times[new] = statistics.median(runs[1:])
    return {"impl": "mamba_ssm MambaLMHeadModel.generate(cg=True), Mamba-2",
            "params": sum(p.numel() for p in model.parameters()),
            "ms_per_token": (times[LONG] - times[SHORT]) / (LONG - SHORT),
            "generate_ms": {str(k): v for k, v in times.items()}}


def altbench_ms_per_token(backend: str) -> dict:
    settings = Settings(reps=100, warmup=5, decode_tokens=100, energy=False)
    cell = Cell("mamba2", "130m", backend, "decode", "bfloat16", "cuda", 1, PROMPT, settings)
    row = measure_cell(cell)
    if row["status"] != "ok":
        return {"impl": f"altbench mamba2 130m ({backend})", "error": row["message"]}
    return {"impl": f"altbench mamba2 130m ({backend}), compiled {row['compiled']}, graphs {row['cuda_graphs']}",
            "params": row["params"], "ms_per_token": row["ms_median"], "ci": [row["ms_ci_low"], row["ms_ci_high"]],
            "compile_ms": row["compile_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "decode_peers.json"))
    args = parser.parse_args()
    rows = []
    for name, fn in (("mamba_ssm", mamba_ssm_ms_per_token), ("altbench", lambda: altbench_ms_per_token("triton"))):
        try:
            rows.append(fn())
        except Exception as e:  # noqa: BLE001 - report, do not crash the benchmark
            rows.append({"impl": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        print(json.dumps(rows[-1]), flush=True)
    peer, ours = rows
    ratio = ours["ms_per_token"] / peer["ms_per_token"] if "error" not in peer and "error" not in ours else None
    print("\n| implementation | params | ms per token |\n|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r.get('params', '?'):,} | {r.get('ms_per_token', float('nan')):.4f} |"
              if "error" not in r else f"| {r['impl']} | | error: {r['error']} |")
    if ratio is not None:
        print(f"\naltbench / mamba_ssm per-token time: {ratio:.3f} (target <= 0.8)")
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
