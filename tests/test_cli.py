"""The CLI as a user runs it: `altbench run --suite smoke` end to end, `report`, `list`, and every
user mistake answered by one line on stderr with exit code 2 and no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from altbench.runner import rundir, suite as suites
from altbench.runner.cells import expand

TESTS = Path(__file__).parent


def altbench(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "altbench", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    result = altbench("run", "--suite", "smoke", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1]), result


def test_smoke_run_stores_one_ok_row_per_cell(smoke_run):
    run_dir, result = smoke_run
    rows = rundir.read_rows(run_dir)
    expected = {c.cell_id for c in expand(suites.load("smoke"), "cpu")}
    assert sorted(r["cell_id"] for r in rows) == sorted(expected)
    skipped = [r for r in rows if r["status"] == "skipped"]  # decode of the models without a causal step
    assert sorted((r["arch"], r["measurement"], r["seq_len"], r["message"]) for r in skipped) == [
        (arch, "decode", L, "not applicable (no causal step)") for arch in ("hrm", "llada") for L in (64, 256)]
    for r in rows:
        if r in skipped:
            continue
        assert r["status"] == "ok", r
        assert r["ms_median"] > 0 and r["ms_ci_low"] <= r["ms_median"] <= r["ms_ci_high"]
        assert r["reps"] >= 7 and r["peak_mem_bytes"] > 0 and r["tokens_per_s"] > 0
    assert "results" in result.stdout and "transformer" in result.stdout  # the rich summary table


def test_smoke_run_writes_env_tables_and_plots(smoke_run):
    run_dir, _ = smoke_run
    env = json.loads((run_dir / "env.json").read_text())
    assert env["suite"] == "smoke" and env["torch"] and "run --suite smoke" in env["command"]
    for name in ("prefill", "decode", "train_step", "generate", "reasoning"):
        assert (run_dir / "tables" / f"{name}.md").stat().st_size > 0
        assert (run_dir / "tables" / f"{name}.csv").stat().st_size > 0
    assert any(p.stat().st_size > 1000 for p in (run_dir / "plots").glob("*.png"))


def test_report_rerenders_from_the_store_alone(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("cells.jsonl", "env.json", "suite.toml"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    result = altbench("report", str(copy))
    assert result.returncode == 0, result.stderr
    assert (copy / "tables" / "prefill.md").read_text() == (run_dir / "tables" / "prefill.md").read_text()


def test_resume_of_a_finished_run_runs_nothing(smoke_run):
    run_dir, _ = smoke_run
    before = rundir.store_path(run_dir).read_bytes()
    result = altbench("run", "--resume", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "0 cells to run" in result.stdout
    assert rundir.store_path(run_dir).read_bytes() == before


def test_archs_narrows_a_new_run_and_its_resume(tmp_path):
    result = altbench("run", "--suite", "smoke", "--device", "cpu", "--out", str(tmp_path), "--archs", "mamba")
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    expected = {c.cell_id for c in expand(suites.load("smoke"), "cpu") if c.arch == "mamba"}
    assert {r["cell_id"] for r in rundir.read_rows(run_dir)} == expected and expected
    again = altbench("run", "--resume", str(run_dir))
    assert again.returncode == 0 and "0 cells to run" in again.stdout, again.stderr


def test_backends_narrows_a_new_run(tmp_path):
    suite = tmp_path / "two.toml"
    suite.write_text('name = "two"\narchs = ["mamba2"]\nsizes = ["tiny"]\nbackends = ["torch", "triton"]\n'
                     'seq_lens = [16]\ndevice = "cpu"\n[measurements.prefill]\n')
    result = altbench("run", "--suite", str(suite), "--out", str(tmp_path), "--backends", "triton")
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert [r["backend"] for r in rundir.read_rows(run_dir)] == ["triton"]
    assert json.loads((run_dir / "env.json").read_text())["overrides"] == {"backends": ["triton"]}


def test_list_shows_archs_sizes_backends_suites():
    result = altbench("list")
    assert result.returncode == 0, result.stderr
    for text in ("transformer", "mamba", "130m", "129.1M", "mamba_ssm", "smoke", "long-context", "hrm", "27m (27.3M)"):
        assert text in result.stdout


BAD = {
    "unknown-suite": (["run", "--suite", "nope"], "unknown suite 'nope'; known:"),
    "bad-toml": (["run", "--suite", "{bad}"], "invalid TOML"),
    "unknown-arch": (["run", "--suite", "{arch}"], "unknown arch 'gpt5'"),
    "unwritable-out": (["run", "--suite", "smoke", "--out", "{file}/sub"], "cannot write results under"),
    "missing-run": (["run", "--resume", "no-such-run", "--out", "{tmp}"], "run 'no-such-run' not found"),
    "report-missing": (["report", "{tmp}/nothing"], "is not a run directory"),
    "no-suite": (["run"], "give --suite"),
    "bad-device": (["run", "--suite", "smoke", "--device", "tpu"], "unknown device 'tpu'"),
    "retry-without-resume": (["run", "--suite", "smoke", "--retry", "error"], "--retry re-runs cells of an existing run"),
    "archs-unknown": (["run", "--suite", "smoke", "--archs", "mamba,gpt5"], "unknown architecture 'gpt5'; known: transformer"),
    "archs-on-resume": (["run", "--resume", "r", "--archs", "mamba"], "a resumed run keeps its own architectures"),
    "backends-unknown": (["run", "--suite", "smoke", "--backends", "torch,cudnn"], "unknown backend 'cudnn'; known: torch, triton, fla, mamba_ssm"),
    "backends-on-resume": (["run", "--resume", "r", "--backends", "fla"], "a resumed run keeps its own architectures, backends"),
    "retry-unknown": (["run", "--resume", "r", "--retry", "eror"], "--retry: unknown outcome eror (known: ok, oom,"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_user_mistakes_give_one_line_and_exit_2(case, tmp_path):
    args, message = BAD[case]
    (tmp_path / "bad.toml").write_text('name = "x"\narchs = ["mamba",,]\n')
    (tmp_path / "arch.toml").write_text('archs = ["gpt5"]\nseq_lens = [8]\n[measurements.prefill]\n')
    (tmp_path / "file").write_text("")
    fill = {"bad": tmp_path / "bad.toml", "arch": tmp_path / "arch.toml", "file": tmp_path / "file", "tmp": tmp_path}
    result = altbench(*[a.format(**fill) for a in args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_on_a_machine_without_gpu(tmp_path):
    result = altbench("run", "--suite", "smoke", "--device", "cuda", "--out", str(tmp_path))
    assert result.returncode == 2 and "no CUDA GPU is visible" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_transformers_still_imports_and_kernels_is_not_ours():
    """altbench installs its kernels as altbench.kernels: a top-level `kernels` would shadow HF's."""
    import importlib.util

    spec = importlib.util.find_spec("kernels")
    assert spec is None or "altbench" not in str(spec.origin)
    import altbench.kernels  # noqa: F401

    transformers = pytest.importorskip("transformers")
    assert transformers.LlamaConfig(hidden_size=64).hidden_size == 64


def test_eval_scores_land_in_a_store(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = altbench("eval", "--arch", "mamba", "--size", "tiny", "--tasks", "altbench_tiny_mc", "--limit", "4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    (row,) = rundir.read_rows(run_dir)
    assert row["measurement"] == "lm_eval" and row["task"] == "altbench_tiny_mc" and 0 <= row["value"] <= 1
    bad = altbench("eval", "--arch", "mamba", "--size", "tiny", "--tasks", "nosuchtask", "--out", str(tmp_path))
    assert bad.returncode == 2 and "unknown task 'nosuchtask'" in bad.stderr and "Traceback" not in bad.stderr


def test_run_with_weights_loads_a_local_checkpoint_and_checks_its_shapes(tmp_path):
    transformers = pytest.importorskip("transformers")
    from altbench import registry
    from altbench.models import mamba

    ckpt = tmp_path / "ckpt"
    transformers.MambaForCausalLM(mamba.to_hf_config(registry.config("mamba", "tiny"))).save_pretrained(ckpt)
    suite = tmp_path / "one.toml"
    suite.write_text('archs = ["mamba"]\nsizes = ["tiny"]\nseq_lens = [16]\n[settings]\nreps = 3\nwarmup = 0\n[measurements.prefill]\n')
    result = altbench("run", "--suite", str(suite), "--weights", str(ckpt), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    (row,) = rundir.read_rows(Path(result.stdout.strip().splitlines()[-1]))
    assert row["status"] == "ok" and row["weights"] == str(ckpt.resolve())

    wrong = tmp_path / "wrong.toml"
    wrong.write_text(suite.read_text().replace('"tiny"', '"130m"'))
    bad = altbench("run", "--suite", str(wrong), "--weights", str(ckpt), "--out", str(tmp_path / "out"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "tensor 'embed.weight' has shape (256, 64), the model expects (50280, 768)" in bad.stderr


def test_compare_runs_the_missing_cells_when_given_a_suite(tmp_path):
    suite = tmp_path / "two.toml"
    suite.write_text('archs = ["transformer"]\nsizes = ["tiny"]\nseq_lens = [16]\n[settings]\nreps = 3\nwarmup = 0\n[measurements.prefill]\n')
    result = altbench("compare", "mamba", "hawk", "--suite", str(suite), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if p.name.startswith("suite-") or (p / "cells.jsonl").exists()]
    assert sorted(r["arch"] for r in rundir.read_rows(run_dir)) == ["hawk", "mamba"]  # the suite's archs replaced
    assert "hawk/mamba" in (tmp_path / "results" / "compare" / "mamba-vs-hawk" / "compare.md").read_text()
