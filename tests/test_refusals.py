"""Random values for every suite key and every CLI option: the command runs (exit 0) or refuses on
one line (exit 2) that names what the user typed, and a refused command creates nothing.

The commands run in this process (tests/inprocess.py) with the sweep replaced by one that stores a
`skipped` row per cell: what is under test is validation and what gets created, not measuring."""

import copy
import json
import math
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import event, given, strategies as st
from inprocess import altbench

from altbench.runner import rundir
from altbench.runner import suite as suites

BASE = {
    "name": "refusals", "description": "", "archs": ["transformer"], "sizes": ["tiny"], "backends": ["torch"],
    "dtypes": ["float32"], "batches": [1], "seq_lens": [8], "device": "cpu", "backend_choice": "each",
    "arch_sizes": {"transformer": ["tiny"]}, "settings": {"reps": 3, "warmup": 0},
    "measurements": {"prefill": {"timeout_s": 60}, "decode": {}},
}
KEYS = ([(k,) for k in suites._TOP] + [("settings", k) for k in suites._SETTING_TYPES]
        + [("measurements", m) for m in suites.MEASUREMENTS] + [("measurements", "prefill", k) for k in suites._SETTING_TYPES]
        + [("arch_sizes", "transformer"), ("arch_sizes", "mamba"), ("unknown",), ("settings", "unknown")])
PLAUSIBLE = ["transformer", "mamba", "tiny", "130m", "torch", "triton", "float32", "bfloat16", "cpu", "cuda", "prefill",
             "each", "first", "a/b", "..", "x.y", "", 0, -1, 1, 8, 2**63, 0.5, -0.0, math.inf, math.nan, True]
DELETE = object()
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
scalars = st.sampled_from(PLAUSIBLE) | st.booleans() | st.integers() | st.floats() | text
def containers(inner):
    return st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3)


toml_values = st.recursive(scalars, containers, max_leaves=6)


def toml(value) -> str:
    """`value` as a TOML value (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


def skipped_rows(run_dir, cells, done, on_start=None, on_row=None, **_):
    rows = [{**c.identity(), "status": "skipped", "message": "not measured in this test"} for c in cells if c.cell_id not in done]
    for row in rows:
        rundir.append_row(run_dir, row)
    return rows


def check(result, where: Path) -> None:
    event(f"exit {result.code}")
    assert result.code in (0, 2), (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    if result.code == 2:
        assert len(lines) == 1 and lines[0].startswith("altbench: error: "), result.stderr
        assert not any(where.iterdir()), sorted(where.rglob("*"))  # nothing created


@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), toml_values | st.just(DELETE)), min_size=1, max_size=3))
def test_random_suite_values_run_or_refuse_on_one_line_creating_nothing(changes):
    data = copy.deepcopy(BASE)
    for path, value in changes:
        table = data
        for key in path[:-1]:
            table = table.setdefault(key, {}) if isinstance(table.get(key, {}), dict) else {}
        if value is DELETE:
            table.pop(path[-1], None)
        else:
            table[path[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "suite.toml"
        suite.write_text("\n".join(f"{json.dumps(k)} = {toml(v)}" for k, v in data.items()))
        out = Path(tmp) / "out"
        out.mkdir()
        with mock.patch("altbench.runner.run.sweep", skipped_rows):
            result = altbench("run", "--suite", suite, "--out", out, cwd=tmp)
        check(result, out)
        if result.code == 0:
            (run_dir,) = out.iterdir()
            assert (run_dir / "summary.md").is_file()


RUN_OPTIONS = ("--archs", "--backends", "--device", "--gpus", "--workers-per-gpu", "--retry", "--resume", "--weights",
               "--suite", "--out")
option_text = st.sampled_from(["transformer", "mamba,transformer", "torch", "cpu", "cuda", "1", "2", "0", "-3", "error",
                               "smoke", "", ",", "x" * 300]) | text
safe_out = st.text("abc-_.", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@given(options=st.dictionaries(st.sampled_from(RUN_OPTIONS), option_text, min_size=1, max_size=4), out=safe_out)
def test_random_run_options_run_or_refuse_on_one_line_creating_nothing(options, out):
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "tiny.toml"
        suite.write_text("\n".join(f"{json.dumps(k)} = {toml(v)}" for k, v in BASE.items()))
        args = {"--suite": str(suite), **options, "--out": str(Path(tmp) / "out" / out)}
        (Path(tmp) / "out").mkdir()
        with mock.patch("altbench.runner.run.sweep", skipped_rows):
            result = altbench("run", *[x for kv in args.items() for x in kv], cwd=tmp)
        check(result, Path(tmp) / "out")


STORE = Path(__file__).parent / "data" / "smoke-store"
READ_OPTIONS = {
    "gate": ("--baseline", "--threshold", "--eager-min-len", "--candidate"),
    "compare": ("--run", "--out", "--suite", "--device"),
    "report": ("RUN",),
}


@given(command=st.sampled_from(sorted(READ_OPTIONS)), data=st.data())
def test_random_options_of_reading_commands_answer_on_one_line(command, data):
    options = data.draw(st.dictionaries(st.sampled_from(READ_OPTIONS[command]),
                                        option_text | st.sampled_from(["0.05", "nan", "-1", "1e308", "inf", str(STORE)]),
                                        max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        if command == "gate":
            options = {"--baseline": str(STORE), "--candidate": str(STORE), **options}
            args = ["gate", *[x for kv in options.items() for x in kv]]
        elif command == "report":  # never the stored fixture: report writes into the run it renders
            args = ["report", options.get("RUN", "") if options.get("RUN") != str(STORE) else "x"]
        else:
            options.setdefault("--run", str(STORE))
            options["--out"] = str(Path(tmp) / "cmp" / (options.get("--out") or "x").replace("/", "_")[:20].strip(".") or "x")
            archs = data.draw(st.lists(st.sampled_from(["transformer", "mamba", "gpt5"]) | text, max_size=3))
            args = ["compare", *archs, *[x for kv in options.items() for x in kv]]
        with mock.patch("altbench.runner.run.sweep", skipped_rows):
            result = altbench(*args, cwd=tmp)
        event(f"exit {result.code}")
        assert result.code in (0, 1, 2) and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        if result.code == 2:
            assert len(lines) == 1 and lines[0].startswith("altbench: error: "), result.stderr
            assert not any(Path(tmp).iterdir()), sorted(Path(tmp).rglob("*"))


@pytest.mark.parametrize("args, option", [
    (["run", "--suite", "smoke", "--archs", "gpt5"], "--archs"),
    (["run", "--suite", "smoke", "--backends", "cudnn"], "--backends"),
    (["run", "--suite", "smoke", "--device", "tpu"], "--device"),
    (["run", "--suite", "smoke", "--gpus", "0"], "--gpus"),
    (["run", "--suite", "smoke", "--workers-per-gpu", "2"], "--workers-per-gpu"),
    (["run", "--resume", "r", "--retry", "eror"], "--retry"),
    (["eval", "--arch", "mamba", "--tasks", "x", "--size", "tiny", "--include", "no-such-folder"], "--include"),
    (["gate", "--baseline", str(STORE), "--candidate", str(STORE), "--threshold", "-1"], "--threshold"),
    (["gate", "--baseline", str(STORE), "--candidate", str(STORE), "--eager-min-len", "x"], "--eager-min-len"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_errors_name_the_option_the_user_typed(tmp_path, args, option):
    result = altbench(*args, "--out", tmp_path / "out", cwd=tmp_path) if args[0] in ("run", "eval") else altbench(*args, cwd=tmp_path)
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert option in line, line
    assert not (tmp_path / "out").exists()


def test_compare_names_an_unknown_arch_it_was_given_not_an_option(tmp_path):
    result = altbench("compare", "mamba", "gpt5", "--suite", "smoke", cwd=tmp_path)
    assert result.code == 2 and not any(tmp_path.iterdir())
    (line,) = result.stderr.strip().splitlines()
    assert "unknown architecture 'gpt5'" in line and "--archs" not in line, line


@pytest.mark.parametrize("table, key", [
    ("[measurements.generate]\nsteps = 0", "'steps' 0"),
    ("[measurements.generate]\ngen_length = 64\nsteps = 65", "'steps' 65"),
    ("[measurements.generate]\ngen_length = 64\nblock_length = 24", "'block_length' 24"),
    ("[measurements.generate]\ngen_length = 64\nblock_length = 16\nsteps = 6", "'steps' 6 must be a multiple of the 4 blocks"),
    ("[measurements.decode]\narchs = [\"llada\"]", "llada cannot do decode (no causal step); remove it from 'archs'"),
], ids=["steps-zero", "steps-over-gen-length", "block-not-dividing", "steps-per-block", "explicit-impossible"])
def test_impossible_generation_settings_and_measurements_are_refused_on_one_line(tmp_path, table, key):
    suite = tmp_path / "gen.toml"
    suite.write_text(f'archs = ["transformer", "llada"]\nseq_lens = [8]\n{table}\n')
    (tmp_path / "out").mkdir()
    result = altbench("run", "--suite", suite, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("altbench: error: ") and key in line and str(suite) in line, line
    assert not any((tmp_path / "out").iterdir())
