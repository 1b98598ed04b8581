"""benchmarks/train_peers.py without a GPU: its arguments, one training-step row of altbench's torch
form on a tiny model, `not installed` rows for peers that are absent, the ratio, roofline and summary
logic on given rows, and (where the xlstm package is installed) that its xLSTM peer computes altbench's
xLSTM, run in Triton's interpreter."""

import importlib.util
import os
import re

import pytest
import torch

from altbench import registry
from altbench.models import xlstm
from altbench.models.hf import rename
from conftest import assert_close

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "train_peers.py")
spec = importlib.util.spec_from_file_location("train_peers", SCRIPT)
tp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tp)

PEER_MODULES = {"rwkv7": ["fla"], "gla": ["fla"], "retnet": ["fla"], "mamba": ["mamba_ssm"], "mamba2": ["mamba_ssm"],
                "xlstm": ["xlstm", "mlstm_kernels"]}


def test_arguments():
    args = tp.parse_args([])
    assert (args.archs, args.impls, args.lengths) == (tp.ARCHS, ["ours", "peer"], [4096, 16384])
    quick = tp.parse_args(["--quick", "--archs", "gla,xlstm", "--lengths", "1K,64"])
    assert (quick.reps, quick.warmup, quick.budget, quick.archs, quick.lengths) == (3, 1, 20.0, ["gla", "xlstm"], [1024, 64])
    with pytest.raises(SystemExit) as exit_:
        tp.parse_args(["--archs", "gla,hyena"])
    assert exit_.value.code == 2


def test_ours_is_a_timed_training_step_of_altbenchs_model():
    row = tp.measure("mamba2", "ours", 32, size="tiny", device="cpu", backend="torch", reps=3, warmup=0)
    assert row["status"] == "ok", row.get("message")
    assert row["implementation"] == "altbench (torch)" and row["reps"] >= 3 and row["first_call_s"] > 0
    assert row["tokens_per_s"] == pytest.approx(32 / (row["ms"] / 1e3))
    model = registry.build("mamba2", "tiny", device="meta")
    assert row["params"] == model.params()
    assert row["flops"] == 3 * model.prefill_flops(32)
    assert row["tflop_s"] == pytest.approx(row["flops"] / (row["ms"] / 1e3) / 1e12)
    assert "top_kernels" not in row  # profiled only when asked


def test_profile_adds_the_kernels_of_a_step():
    row = tp.measure("mamba2", "ours", 32, size="tiny", device="cpu", backend="torch", reps=3, warmup=0, profile=2)
    assert row["status"] == "ok", row.get("message")
    top = row["top_kernels"]
    assert row["kernels_per_step"] > 10 and 0 < len(top) <= 10 and row["kernel_ms_per_step"] > 0
    assert [k["us_per_step"] for k in top] == sorted((k["us_per_step"] for k in top), reverse=True)
    assert sum(k["us_per_step"] for k in top) <= row["kernel_ms_per_step"] * 1e3 * (1 + 1e-9)


def test_ours_takes_the_backend_altbench_run_would():
    assert tp.ours_backend("xlstm", "torch") == "torch"
    expected = "mlstm_kernels" if registry.backend_installed("mlstm_kernels") else "torch"
    assert tp.ours_backend("xlstm") == expected


@pytest.mark.parametrize("arch", tp.ARCHS)
def test_a_missing_peer_is_a_not_installed_row(arch):
    if any(importlib.util.find_spec(m) for m in PEER_MODULES[arch]):
        pytest.skip(f"a peer of {arch} is installed here")
    row = tp.measure(arch, "peer", 32, size="tiny", device="cpu")
    assert row["status"] == "not installed"
    assert PEER_MODULES[arch][0] in row["message"] and row["implementation"] == tp.PEERS[arch][0]
    assert "| not installed: " in tp.markdown_row(row)


def test_ratio_roofline_and_summary():
    ceilings = tp.ceilings_of([{"kind": "ceiling", "op": "copy 1 GiB", "copy_tb_s": 4.0},
                               {"kind": "ceiling", "op": "matmul bf16 8192^3", "matmul_tflop_s": 800.0}])
    assert ceilings == {"copy_gbs": 4000.0, "matmul_bf16_tflops": 800.0}
    common = dict(kind="cell", arch="gla", L=4096, status="ok", flops=8e13, bytes_moved=4e10, tflop_s=0.0, first_call_s=1.0, params=1)
    rows = []
    for impl, ms in (("ours", 500.0), ("peer", 400.0)):
        row = dict(common, impl=impl, implementation=impl, ms=ms, tokens_per_s=4096 / (ms / 1e3))
        rows.append(tp.complete(row, rows, ceilings))
    rows.append(tp.complete(dict(kind="cell", arch="gla", L=16384, impl="ours", status="oom", message="CUDA out of memory"), rows, ceilings))
    assert rows[0]["compute_bound_ms"] == pytest.approx(100.0)  # 8e13 FLOPs at 800 TFLOP/s
    assert rows[0]["memory_bound_ms"] == pytest.approx(10.0)  # 4e10 bytes at 4000 GB/s
    assert rows[0]["roofline_frac"] == pytest.approx(0.2) and rows[1]["roofline_frac"] == pytest.approx(0.25)
    assert "ratio" not in rows[0] and rows[1]["ratio"] == pytest.approx(0.8)
    first, second = tp.summary(rows)
    assert (first["ratio"], first["reached"], first["ours_roofline"]) == (pytest.approx(0.8), True, pytest.approx(0.2))
    assert (second["ours_tokens_per_s"], second["peer"], second["ratio"], second["reached"]) == (None, None, None, None)
    table = tp.summary_markdown([first, second])
    assert "| gla | 4K | ours | 8,192 | 20.0% | peer | 10,240 | 25.0% | 0.80 | yes |" in table
    assert "| gla | 16K | ours | oom | – | – | – | – | – | – |" in table
    assert "| gla | 16K | ours | oom: CUDA out of memory |" in tp.markdown_row(rows[2])


@pytest.mark.triton
def test_the_xlstm_peer_is_altbenchs_xlstm_on_its_weights():
    """xLSTMLarge at altbench's tiny config, its weights renamed onto altbench's xLSTM (transformers'
    names, models/xlstm.py HF_RENAMES, but for the embedding's), gives the same logits."""
    pytest.importorskip("xlstm.xlstm_large.model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    peer, logits_of, label = tp.xlstm_large(registry.config("xlstm", "tiny"), "tiny")
    assert label.startswith("xlstm xLSTMLarge")
    ours = registry.build("xlstm", "tiny")
    weights = {re.sub(r"^embedding\.", "backbone.embeddings.", k): v for k, v in peer.state_dict().items()}
    ours.load_state_dict(rename(weights, xlstm.HF_RENAMES))
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        assert_close("logits", ours.to(device)(ids)[0], logits_of(peer.to(device), ids), 2e-3)
