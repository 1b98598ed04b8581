"""Reports from synthetic stores: scaling exponents, tables, plots, Parquet, compare."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from altbench.cli import app
from altbench.errors import UserError
from altbench.report import render_run
from altbench.report.compare import compare, read_runs
from altbench.report.plots import write_plots
from altbench.report.tables import measurement_markdown, probe_cells
from altbench.report.scaling import compute_bound_range, fit_exponent, fit_scaling
from altbench.runner.rundir import append_row

ENV = {
    "gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "560.35.03", "cuda": "12.6", "count": 1, "memory_bytes": 80 << 30},
    "torch": "2.11.0+cu130", "triton": "3.6.0", "python": "3.12.3", "packages": {"torch": "2.11.0"},
    "git_commit": "0123456789abcdef", "git_dirty": False, "command": "altbench run --suite long-context",
    "hostname": "gpu-1", "cpu": "x86_64", "platform": "Linux", "created_at": "2026-11-20T10:00:00+00:00",
    "ceilings": {"copy_gbs": 3000.0, "matmul_bf16_tflops": 745.0, "launch_us": 8.97}, "suite": "long-context",
}
LENGTHS = 2 ** np.arange(8, 21)  # 256 .. 1M


# --- scaling exponents ----------------------------------------------------------------------------


def cost(p: int, shape: str, seed: int) -> np.ndarray:
    """ms at LENGTHS: a 0.5 ms fixed overhead that the L^p work overtakes at L = 4K, 2% noise."""
    work = 0.5 * (LENGTHS / 4096.0) ** p
    ms = np.maximum(0.5, work) if shape == "knee" else 0.5 + work
    return ms * np.exp(np.random.default_rng(seed).normal(0.0, 0.02, len(LENGTHS)))


@pytest.mark.parametrize("shape, tol", [("knee", 0.02), ("smooth", 0.05)], ids=["knee", "smooth"])
@pytest.mark.parametrize("p", [1, 2], ids=["p1", "p2"])
def test_exponent_recovered_past_the_overhead(p, shape, tol):
    ms = cost(p, shape, seed=p)
    assert abs(fit_exponent(LENGTHS, ms) - p) < tol
    lengths, _ = compute_bound_range(LENGTHS, ms)
    assert lengths[0] > 4096 and lengths[-1] == 2**20  # the flat region is left out...
    naive = np.polyfit(np.log(LENGTHS), np.log(ms), 1)[0]
    assert naive < p - 0.2  # ...and it matters: a slope over every length is far off


def test_flat_cost_has_exponent_zero():
    ms = 0.2 * np.exp(np.random.default_rng(0).normal(0.0, 0.02, len(LENGTHS)))
    fit = fit_scaling(LENGTHS, ms)
    assert abs(fit.exponent) < 0.1 and (fit.first_len, fit.last_len, fit.points) == (2**19, 2**20, 2)


def test_failed_lengths_and_too_few_points():
    assert fit_exponent([1024, 2048, 4096], [1.0, 4.0, None]) == pytest.approx(2.0)
    assert math.isnan(fit_exponent([1024, 2048], [1.0, None]))


# --- a synthetic run --------------------------------------------------------------------------------


def row(measurement: str, arch: str, seq_len: int, ms: float | None = None, status: str = "ok", **extra) -> dict:
    r = {"cell_id": f"{measurement}/{arch}/130m/torch/bfloat16/cuda/b1/L{seq_len}", "arch": arch, "size": "130m",
         "backend": "torch", "measurement": measurement, "dtype": "bfloat16",
         "device": "cuda", "batch": 1, "seq_len": seq_len, "status": status,
         "message": "" if status == "ok" else f"{status}: synthetic reason"}
    if ms is not None:
        r.update(ms_median=ms, ms_ci_low=0.99 * ms, ms_ci_high=1.01 * ms, reps=25, warmup=3,
                 ms_samples=list(ms * (1 + np.linspace(-0.02, 0.02, 25))), first_call_ms=100 * ms,
                 tflops=500 * 1024 / ms * 1e-3, peak_mem_bytes=seq_len * 2**12, mem_source="cuda_allocator")
    return {**r, **extra}


def write_run(run_dir, rows, env=ENV):
    run_dir.mkdir(parents=True)
    (run_dir / "env.json").write_text(json.dumps(env))
    for r in rows:
        append_row(run_dir, r)
    return run_dir


L = (1024, 4096, 16384, 65536)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A rendered run (rendered once: plots take a while on a busy CPU) and the paths render_run returned."""
    rows = [row("prefill", "transformer", n, ms=0.1 * max(1.0, (n / 1024) ** 2 / 16)) for n in L[:3]]
    rows += [row("prefill", "transformer", L[3], status="oom")]
    rows += [row("prefill", "mamba", n, ms=0.5 * max(1.0, n / 4096)) for n in L[:2]]
    rows += [row("prefill", "mamba", L[2], status="error"), row("prefill", "mamba", L[3], status="skipped")]
    rows += [row("decode", "mamba", n, ms=0.04, bytes_per_token=3.0e7, bandwidth_gbs=750.0) for n in L]
    rows += [row("decode", "rwkv7", n, ms=0.1, bytes_moved=3.0e7, flops=2.0e8) for n in L]
    rows += [row("probe", "mamba", 256, task="mqar", metric="accuracy", value=0.875, stderr=0.0125, chance=1 / 4096)]
    run_dir = write_run(tmp_path_factory.mktemp("report") / "run", rows)
    return run_dir, render_run(run_dir)


def markdown_cells(text: str, heading: str) -> list[list[str]]:
    """The body cells of the first Markdown table after `heading`."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table


def test_tables_show_statuses_intervals_and_exponents(run):
    run, _ = run
    text = (run / "tables" / "prefill.md").read_text()
    for words in ("ms per forward pass", "dtype bfloat16", "batch 1", "25 timed repetitions per cell, 3 warm-up"):
        assert words in text
    cells = {r[0]: r[1:] for r in markdown_cells(text, "## prefill")}
    # columns: 1K 4K 16K 64K exponent
    assert cells["transformer"] == ["0.100 [0.0990, 0.101]", "0.100 [0.0990, 0.101]", "1.60 [1.58, 1.62]", "OOM", "2.00 (4K–16K)"]
    assert cells["mamba"] == ["0.500 [0.495, 0.505]", "0.500 [0.495, 0.505]", "error", "skipped", "0.00 (1K–4K)"]
    assert "`prefill/mamba/130m/torch/bfloat16/cuda/b1/L16384`: error — error: synthetic reason" in text

    decode = (run / "tables" / "decode.md").read_text()
    # bound: max(2e8 FLOPs / 745 TFLOP/s, 3e7 bytes / 3000 GB/s) = 0.01 ms
    bound = markdown_cells(decode, "fraction of the roofline bound")
    assert bound == [["mamba", *["0.25"] * 4], ["rwkv7", *["0.10 implementation-bound"] * 4]]
    cells = {r[0]: r[1:] for r in markdown_cells(decode, "## decode")}
    assert cells["rwkv7"][0] == "0.100 [0.0990, 0.101] †" and cells["mamba"][0] == "0.0400 [0.0396, 0.0404]"
    assert "† implementation-bound: under 20% of its roofline bound" in decode
    frame = pd.read_csv(run / "tables" / "decode.csv")
    assert frame.loc[frame.arch == "rwkv7", "roofline_frac"].tolist() == pytest.approx([0.1] * 4)
    assert frame.loc[frame.arch == "rwkv7", "implementation_bound"].all()
    assert not frame.loc[frame.arch == "mamba", "implementation_bound"].any()
    probe = (run / "tables" / "probe.md").read_text()
    assert markdown_cells(probe, "## probe") == [["mqar", "L=256", "0.000244", "0.875 ± 0.0125"]] and "metric accuracy" in probe


def test_no_cell_is_blank_or_zero(run):
    run, _ = run
    for name in ("prefill", "decode", "probe"):
        text = (run / "tables" / f"{name}.md").read_text()
        for line in text.splitlines():
            if line.startswith("|") and not line.startswith("|:"):
                assert all(c.strip() not in ("", "0", "nan") for c in line.strip("|").split("|")), line


def test_csv_keeps_raw_numbers_and_statuses(run):
    run, _ = run
    frame = pd.read_csv(run / "tables" / "prefill.csv")
    assert len(frame) == 8
    oom = frame[frame.seq_len == 65536].set_index("arch")
    assert oom.loc["transformer", "status"] == "oom" and math.isnan(oom.loc["transformer", "ms_median"])
    ok = frame[(frame.arch == "transformer") & (frame.seq_len == 16384)].iloc[0]
    assert ok.ms_median == pytest.approx(1.6) and ok.exponent == pytest.approx(2.0)
    assert ok.matmul_ceiling_fraction == pytest.approx(500 * 1024 / 1.6 * 1e-3 / 745)
    assert "25," in (run / "tables" / "prefill.csv").read_text()  # reps stay integers beside failed cells' blanks


def test_plots_parquet_and_summary_written(run):
    run, written = run
    names = {p.relative_to(run).as_posix() for p in written}
    for stem in ("plots/prefill_ms", "plots/decode_ms", "plots/memory", "plots/ceilings"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
        assert (run / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run / f"{stem}.png").stat().st_size > 5000 and b"<svg" in (run / f"{stem}.svg").read_bytes()[:1000]
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)

    cells = pd.read_parquet(run / "cells.parquet")
    assert len(cells) == 17 and sorted(cells.status.unique()) == ["error", "ok", "oom", "skipped"]
    first = cells[cells.cell_id == "prefill/transformer/130m/torch/bfloat16/cuda/b1/L1024"].iloc[0]
    assert len(first.ms_samples) == 25 and first.ms_samples[12] == pytest.approx(0.1)

    summary = (run / "summary.md").read_text()
    for words in ("NVIDIA H100 80GB HBM3", "driver 560.35.03", "torch 2.11.0+cu130", "git 0123456789ab",
                  "[prefill](tables/prefill.md)", "[probe](tables/probe.md)", "![ceilings](plots/ceilings.png)",
                  "| prefill | 5 | 1 | 1 | 0 | 1 |", "host 9.0 us per eager kernel launch",
                  "## Fairness: the implementation behind each figure",
                  "| decode | rwkv7 | torch, eager | 0.10–0.10 | 4 of 4 |", "| decode | mamba | torch, eager | 0.25–0.25 | 0 of 4 |"):
        assert words in summary


def test_any_subset_of_measurements(tmp_path):
    rows = [row("train_step", "mamba", n, status=s) for n, s in ((1024, "oom"), (4096, "timeout"))]
    rows += [row("lm_eval", "mamba", 2048, task="piqa", metric="acc", value=0.61, stderr=0.011)]
    run = write_run(tmp_path / "run", rows, env={**ENV, "gpu": None, "ceilings": None})
    written = {p.relative_to(run).as_posix() for p in render_run(run)}
    assert written == {"tables/train_step.md", "tables/train_step.csv", "tables/lm_eval.md", "tables/lm_eval.csv",
                       "cells.parquet", "summary.md"}  # nothing ran in train_step: no plot
    cells = markdown_cells((run / "tables" / "train_step.md").read_text(), "## train_step")
    assert cells == [["mamba", "OOM", "timeout", "n/a"]]
    assert "no cell ran" in (run / "tables" / "train_step.md").read_text()
    assert "no GPU" in (run / "summary.md").read_text()


def test_render_without_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        render_run(tmp_path)


# --- compare ----------------------------------------------------------------------------------------


def test_compare_ratios_against_the_first_arch(tmp_path):
    a = write_run(tmp_path / "a", [row("prefill", "transformer", n, ms=ms) for n, ms in zip(L, (2.0, 4.0, 8.0, 16.0))])
    b = write_run(tmp_path / "b", [row("prefill", "mamba", n, ms=ms) for n, ms in zip(L[:3], (1.0, 1.0, 2.0))]
                  + [row("prefill", "mamba", L[3], status="oom")]
                  + [row("prefill", "rwkv7", n, ms=ms) for n, ms in zip(L, (3.0, 3.0, 3.0, 3.0))])
    written = compare(read_runs([a, b]), ["transformer", "mamba", "rwkv7"], tmp_path / "out")
    numeric = pd.read_csv(tmp_path / "out" / "compare_prefill.csv")
    assert numeric["mamba/transformer"].iloc[:3].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert math.isnan(numeric["mamba/transformer"].iloc[3])
    assert numeric["rwkv7/transformer"].tolist() == pytest.approx([1.5, 0.75, 0.375, 0.1875])
    cells = markdown_cells((tmp_path / "out" / "compare.md").read_text(), "## prefill")
    assert cells[3] == ["64K", "16.0 [15.8, 16.2]", "OOM", "3.00 [2.97, 3.03]", "–", "0.188"]
    assert {p.name for p in written} >= {"compare.md", "compare_prefill.csv", "compare_prefill.png", "compare_prefill.svg"}
    assert (tmp_path / "out" / "compare_prefill.png").stat().st_size > 5000
    assert "Runs: a, b." in (tmp_path / "out" / "compare.md").read_text()


def test_decode_throughput_against_batch_beside_its_bound(tmp_path):
    rows = [row("decode", arch, 2048, ms=ms, batch=b, cell_id=f"decode/{arch}/1.4b/triton/bfloat16/cuda/b{b}/L2048",
                tokens_per_s=b / ms * 1e3, bytes_moved=2.7e9 + b * state, state_bytes=b * state, flops=2.8e9 * b)
            for arch, state, ms0 in (("transformer", 4e8, 3.0), ("mamba", 3e7, 2.0)) for b in (1, 16, 64)
            for ms in [ms0 * (1 + b / 16)]]
    written = render_run(write_run(tmp_path / "run", rows))
    text = (tmp_path / "run" / "tables" / "decode.md").read_text()
    cells = markdown_cells(text, "throughput against batch")
    # mamba b16: 16 / 4 ms = 4,000 tokens/s; bound (2.7e9 + 16 * 3e7) bytes / 3000 GB/s = 1.06 ms: 0.27 of it
    assert cells[0][:2] == ["mamba 130m (torch)", "2K"] and cells[0][3] == "4,000, 0.27 of bound, state 0.45 GiB"
    # transformer b1: 1 / 3.1875 ms = 314 tokens/s; bound (2.7e9 + 4e8) bytes / 3000 GB/s = 1.03 ms
    assert cells[1][2] == "314, 0.32 of bound, state 0.37 GiB"
    assert tmp_path / "run" / "plots" / "decode_throughput.png" in written


def test_compare_marks_implementation_bound_cells(tmp_path):
    rows = [row("decode", "transformer", 1024, ms=0.05, roofline_frac=0.5),
            row("decode", "mamba", 1024, ms=0.5, roofline_frac=0.05)]
    compare(rows, ["transformer", "mamba"], tmp_path)
    text = (tmp_path / "compare.md").read_text()
    cells = markdown_cells(text, "## decode")
    assert cells[0][1:3] == ["0.0500 [0.0495, 0.0505]", "0.500 [0.495, 0.505] †"]
    assert "† implementation-bound" in text


def test_compare_unknown_arch_lists_the_present_ones(tmp_path):
    rows = [row("prefill", "mamba", 1024, ms=1.0), row("prefill", "transformer", 1024, ms=1.0)]
    with pytest.raises(UserError, match="no results for rwkv7 .* archs present: mamba, transformer"):
        compare(rows, ["mamba", "rwkv7"], tmp_path)
    with pytest.raises(UserError, match="two or more different archs"):
        compare(rows, ["mamba"], tmp_path)


def test_cli_compare_reads_runs_under_results(tmp_path, monkeypatch):
    write_run(tmp_path / "results" / "r1", [row("decode", "transformer", n, ms=0.01 * n / 1024) for n in L])
    write_run(tmp_path / "results" / "r2", [row("decode", "mamba", n, ms=0.02) for n in L])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "transformer", "mamba"])
    assert result.exit_code == 0, result.output
    numeric = pd.read_csv(tmp_path / "results" / "compare" / "transformer-vs-mamba" / "compare_decode.csv")
    assert numeric["mamba/transformer"].tolist() == pytest.approx([2.0, 0.5, 0.125, 0.03125])


# --- probes -----------------------------------------------------------------------------------------


def probe(arch: str, task: str, value: float | None = None, stderr: float = 0.0, status: str = "ok", **axes) -> dict:
    """A probe row as `run_cell` stores it: a failed cell has one row with no axis values or curve."""
    cell_id = "/".join(["probe", task, arch, *(f"{k}{v}" for k, v in axes.items())])
    seq_len = axes.pop("seq_len", 0)
    r = row("probe", arch, seq_len, status=status, task=task, metric="accuracy", value=value, stderr=stderr,
            chance=1 / 4096 if task == "mqar" else 1 / 16, curve=[[10, 5.0 + len(arch)], [20, 1.0], [30, 0.1]],
            steps=30, cell_id=cell_id, **axes)
    if status != "ok":
        for k in ("value", "stderr", "chance", "curve", "steps"):
            del r[k]
    return r


PROBE_ROWS = [  # shuffled: the helper orders tasks, points and archs itself
    probe("mamba", "induction_heads", status="oom"),
    probe("transformer", "mqar", 0.75, 0.04, seq_len=64, num_kv_pairs=8),
    probe("mamba", "mqar", 0.25, 0.04, seq_len=64, num_kv_pairs=8),
    probe("mamba", "selective_copying", status="error"),
    probe("mamba", "mqar", 0.5, 0.05, seq_len=64, num_kv_pairs=4),
    probe("transformer", "induction_heads", 0.96, 0.01, seq_len=256),
    probe("transformer", "mqar", 0.9, 0.03, seq_len=64, num_kv_pairs=4),
]


def test_probe_cells_group_points_and_keep_failures():
    cells = probe_cells(PROBE_ROWS + [row("prefill", "mamba", 1024, ms=1.0)])  # other measurements are ignored
    table = [(c.task, c.point, c.series, c.value, c.stderr, c.status) for c in cells.itertuples()]
    nan = float("nan")
    expected = [  # kv is the only axis that varies in mqar; a failed cell shows at every point of its task
        ("mqar", "kv=4", "mamba", 0.5, 0.05, "ok"), ("mqar", "kv=4", "transformer", 0.9, 0.03, "ok"),
        ("mqar", "kv=8", "mamba", 0.25, 0.04, "ok"), ("mqar", "kv=8", "transformer", 0.75, 0.04, "ok"),
        ("selective_copying", "all points", "mamba", nan, nan, "error"),
        ("induction_heads", "L=256", "mamba", nan, nan, "oom"), ("induction_heads", "L=256", "transformer", 0.96, 0.01, "ok"),
    ]
    assert [t[:3] + t[5:] for t in table] == [t[:3] + t[5:] for t in expected]
    assert np.allclose([t[3:5] for t in table], [t[3:5] for t in expected], equal_nan=True)
    assert cells.chance.tolist()[:2] == [1 / 4096] * 2 and math.isnan(cells.chance[4]) and cells.chance[5] == 1 / 16
    assert list(cells.series.cat.categories) == ["mamba", "transformer"]


def test_untrained_lengths_are_labelled_with_the_length_trained_at():
    rows = [probe("mamba", "induction_heads", 0.2, 0.01, seq_len=1024, train_seq_len=256),
            probe("mamba", "induction_heads", 0.96, 0.01, seq_len=256, train_seq_len=256)]
    assert probe_cells(rows).point.tolist() == ["L=256", "L=1024 (trained at L=256)"]


def test_probe_table_has_one_line_per_point_with_chance():
    markdown, frame = measurement_markdown("probe", PROBE_ROWS, ENV)
    assert markdown_cells(markdown, "## probe") == [
        ["mqar", "kv=4", "0.000244", "0.500 ± 0.0500", "0.900 ± 0.0300"],
        ["mqar", "kv=8", "0.000244", "0.250 ± 0.0400", "0.750 ± 0.0400"],
        ["selective_copying", "all points", "n/a", "error", "–"],
        ["induction_heads", "L=256", "0.0625", "OOM", "0.960 ± 0.0100"],
    ]
    heading = next(line for line in markdown.splitlines() if line.startswith("| task"))
    assert [c.strip() for c in heading.strip("|").split("|")] == ["task", "point", "chance", "mamba", "transformer"]
    assert "`probe/induction_heads/mamba`: OOM" in markdown and "Lines are a task's evaluated points" in markdown
    mqar = frame[frame.task == "mqar"].sort_values(["arch", "num_kv_pairs"])
    assert mqar.num_kv_pairs.tolist() == [4, 8, 4, 8] and mqar.chance.tolist() == pytest.approx([1 / 4096] * 4)


def test_a_probe_whose_training_loss_turned_nan_shows_as_diverged_not_as_its_accuracy(tmp_path):
    broken = probe("hawk", "mqar", 0.0, 0.0, seq_len=64, num_kv_pairs=4)
    broken["curve"] = [[10, 9.0], [20, None], [30, None]]  # the store writes NaN as null
    rows = [broken, probe("mamba", "mqar", 0.5, 0.05, seq_len=64, num_kv_pairs=4)]
    markdown, _ = measurement_markdown("probe", rows, ENV)
    assert markdown_cells(markdown, "## probe") == [["mqar", "L=64, kv=4", "0.000244", "diverged (step 20)", "0.500 ± 0.0500"]]
    write_plots(rows, {}, tmp_path)
    assert ">diverged<" in (tmp_path / "probe_accuracy.svg").read_text()
    run_dir = tmp_path / "run"
    render_run(write_run(run_dir, rows))
    summary = (run_dir / "summary.md").read_text()
    assert "| measurement | ok | OOM | error | timeout | skipped | diverged | not reached |" in summary
    assert "| probe | 1 | 0 | 0 | 0 | 0 | 1 | 0 |" in summary
    assert f"`altbench run --resume {run_dir} --retry diverged` trains them again" in summary


def test_probe_plots_written_with_every_cell(tmp_path):
    written = write_plots(PROBE_ROWS, {}, tmp_path)
    assert [p.name for p in written] == ["probe_accuracy.png", "probe_accuracy.svg", "probe_curves.png", "probe_curves.svg"]
    for p in written:
        assert p.stat().st_size > 5000
    svg = (tmp_path / "probe_accuracy.svg").read_text()  # text stays text in the SVG
    for words in ("mqar", "selective_copying", "induction_heads", "kv=4", "kv=8", "all points", "L=256", ">OOM<",
                  ">error<", "chance", "did not run or diverged", "transformer"):
        assert words in svg, words
    curves = (tmp_path / "probe_curves.svg").read_text()
    assert "selective_copying" not in curves and "induction_heads" in curves and "mamba" in curves


def test_no_probe_rows_no_probe_plots(tmp_path):
    rows = [row("prefill", "mamba", n, ms=0.5 * n / 1024) for n in L[:2]]
    written = write_plots(rows, {}, tmp_path)
    assert sorted(p.name for p in written) == ["memory.png", "memory.svg", "prefill_ms.png", "prefill_ms.svg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.png", "memory.svg", "prefill_ms.png", "prefill_ms.svg"]
