"""A damaged run directory is read, never a traceback: damage anywhere in the store is skipped with
one warning naming file and lines while every good row is still read and rendered; a missing or
damaged env.json is an unknown environment; outputs that cannot be written fail on one line.

The store is a real smoke run (tests/data/smoke-store: transformer and mamba, tiny, prefill and
decode); the commands run in this process (tests/inprocess.py)."""

import errno
import io
import json
import os
import shutil
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from hypothesis import event, given, strategies as st
from inprocess import altbench

from altbench.runner import rundir
from altbench.runner.store import FIELD_TYPES, row_problem

STORE = Path(__file__).parent / "data" / "smoke-store"
GOOD = rundir.store_path(STORE).read_bytes().splitlines(keepends=True)
ROWS = [json.loads(line) for line in GOOD]


def is_row(line: bytes) -> bool:
    try:
        return row_problem(json.loads(line.decode())) is None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           containers, max_leaves=10)
# Each damage case is one or more lines, none of them a row, each ending in a newline.
DAMAGE = {
    "random bytes": st.binary(min_size=1, max_size=120),
    "random JSON": json_values.map(lambda v: json.dumps(v).encode()),
    "truncated row": st.tuples(st.sampled_from(GOOD), st.floats(0, 1, exclude_max=True)).map(
        lambda t: t[0][: int(t[1] * (len(t[0]) - 1))]),
    "row with a mistyped field": st.tuples(  # no field of a row holds an object
        st.sampled_from(ROWS), st.sampled_from(sorted(FIELD_TYPES)), st.dictionaries(st.text(max_size=4), json_values,
                                                                                       max_size=2)).map(
        lambda t: json.dumps({**t[0], t[1]: t[2]}).encode()),
}
damage = st.one_of(*(s.map(lambda b, kind=kind: (kind, b)) for kind, s in DAMAGE.items()))
insertions = st.lists(st.tuples(st.integers(0, len(GOOD)), damage), min_size=1, max_size=4)


def damaged_copy(where: Path, inserts: list[tuple[int, tuple[str, bytes]]], torn_end: bytes = b"") -> Path:
    """A copy of the smoke store with each damage inserted before line `at` (and a torn last line)."""
    run = where / "run"
    shutil.copytree(STORE, run)
    lines = list(GOOD)
    for at, (_, data) in sorted(inserts, key=lambda t: -t[0]):
        lines.insert(at, data.rstrip(b"\n") + b"\n")
    rundir.store_path(run).write_bytes(b"".join(lines) + torn_end)
    return run


def check_reads(result, run: Path, damaged: bool) -> None:
    assert result.code in (0, 2), result.stderr
    stderr = result.stderr.strip().splitlines()
    assert len(stderr) <= 2 and "Traceback" not in result.stderr, result.stderr
    if damaged:
        assert any(f"{rundir.store_path(run)}: skipped" in line and "damaged line" in line for line in stderr), stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The undamaged store's report, to compare damaged ones against."""
    run = tmp_path_factory.mktemp("clean") / "run"
    shutil.copytree(STORE, run)
    assert altbench("report", run).code == 0
    return run


def cases(inserts) -> bool:
    for _, (kind, _) in inserts:
        event(kind)
    pieces = [piece for _, (_, data) in inserts for piece in data.split(b"\n") if piece.strip()]
    assert not any(is_row(piece) for piece in pieces)
    return bool(pieces)


@given(inserts=insertions, torn=st.sampled_from([b"", b'{"cell_id": "prefill/torn']))
def test_every_good_row_is_read_around_damage_anywhere(tmp_path_factory, inserts, torn):
    damaged = cases(inserts) or bool(torn)
    run = damaged_copy(tmp_path_factory.mktemp("d"), inserts, torn)
    with redirect_stderr(io.StringIO()) as err:
        assert rundir.read_rows(run) == ROWS
    assert len(err.getvalue().splitlines()) == damaged


@given(inserts=insertions)
def test_report_renders_every_good_row_of_a_damaged_store(tmp_path_factory, rendered, inserts):
    run = damaged_copy(tmp_path_factory.mktemp("d"), inserts)
    result = altbench("report", run)
    check_reads(result, run, cases(inserts))
    assert result.code == 0
    for table in (rendered / "tables").glob("*.md"):
        assert (run / "tables" / table.name).read_text() == table.read_text()


@given(inserts=insertions)
def test_compare_and_gate_read_every_good_row_of_a_damaged_store(tmp_path_factory, inserts):
    where = tmp_path_factory.mktemp("d")
    run = damaged_copy(where, inserts)
    compared = altbench("compare", "transformer", "mamba", "--run", run, "--out", where / "cmp")
    check_reads(compared, run, cases(inserts))
    assert compared.code == 0 and "# transformer vs mamba" in compared.stdout
    gated = altbench("gate", "--baseline", STORE, "--candidate", run)
    check_reads(gated, run, cases(inserts))
    assert gated.code == 0 and f"PASS: no regression in {len(ROWS)} cells" in gated.stdout


@given(inserts=insertions)
def test_resume_of_a_damaged_finished_run_runs_nothing(tmp_path_factory, inserts):
    run = damaged_copy(tmp_path_factory.mktemp("d"), inserts)
    before = rundir.store_path(run).read_bytes()
    result = altbench("run", "--resume", run)
    check_reads(result, run, cases(inserts))
    assert result.code == 0 and "0 cells to run" in result.stdout
    assert rundir.store_path(run).read_bytes() == before


def test_the_warning_names_file_lines_and_count(tmp_path):
    run = damaged_copy(tmp_path, [(0, ("", b"\xff\xfe")), (3, ("", b"[1, 2]")), (3, ("", b"{")), (7, ("", b"nope"))])
    result = altbench("report", run)
    assert result.code == 0
    (warning,) = result.stderr.strip().splitlines()
    assert warning == (f"altbench: warning: {run / 'cells.jsonl'}: skipped 4 damaged lines (lines 1, 5-6, 11: "
                       "not UTF-8, not JSON or not a row); every other row was read")


ENV_DAMAGE = {
    "missing": None, "empty": b"", "not UTF-8": b"\xff{}", "not JSON": b'{"gpu": ', "a list": b"[1, 2]",
}


@pytest.mark.parametrize("case", ENV_DAMAGE, ids=list(ENV_DAMAGE))
def test_a_damaged_env_is_an_unknown_environment(tmp_path, rendered, case):
    run = tmp_path / "run"
    shutil.copytree(STORE, run)
    env = run / "env.json"
    env.unlink() if ENV_DAMAGE[case] is None else env.write_bytes(ENV_DAMAGE[case])
    result = altbench("report", run)
    assert result.code == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert str(env) in warning and "the environment of these results is unknown" in warning
    assert "environment of these results is unknown" in (run / "summary.md").read_text()
    for table in (rendered / "tables").glob("*.md"):
        assert (run / "tables" / table.name).read_text() == table.read_text()

    gated = altbench("gate", "--baseline", STORE, "--candidate", run)
    assert gated.code == 1 and "REFUSED: could not compare environments (candidate env.json" in gated.stdout
    assert len(gated.stderr.strip().splitlines()) == 1
    judged = altbench("gate", "--baseline", STORE, "--candidate", run, "--allow-env-mismatch")
    assert judged.code == 0 and "Could not compare environments; judged anyway" in judged.stdout


def test_env_keys_of_the_wrong_type_are_dropped_with_one_warning(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(STORE, run)
    env = json.loads((run / "env.json").read_text())
    (run / "env.json").write_text(json.dumps({**env, "gpu": 5, "git_commit": ["x"]}))
    result = altbench("report", run)
    assert result.code == 0
    (warning,) = result.stderr.strip().splitlines()
    assert "ignored gpu, git_commit (unexpected values)" in warning


def a_file_where_tables_go(run: Path, monkeypatch) -> None:
    (run / "tables").write_text("not a directory")


def read_only_outputs(run: Path, monkeypatch) -> None:
    """tables/ and plots/ read-only; as root, whom modes do not stop, creating files there is refused."""
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if Path(path).parent.name in ("tables", "plots") and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    for path in (run / "tables", run / "plots"):
        path.mkdir()
        path.chmod(0o555)
    monkeypatch.setattr(os, "open", refuse)


def disk_full(run: Path, monkeypatch) -> None:
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)


OUTPUTS = {
    "a file where a directory goes": (a_file_where_tables_go, "tables: a file stands where a directory is needed"),
    "read-only directory": (read_only_outputs, "Permission denied"),
    "disk full": (disk_full, "No space left on device"),
}


@pytest.mark.parametrize("case", OUTPUTS, ids=list(OUTPUTS))
def test_outputs_that_cannot_be_written_fail_on_one_line_and_leave_the_store(tmp_path, monkeypatch, case):
    run = tmp_path / "run"
    shutil.copytree(STORE, run)
    store = rundir.store_path(run).read_bytes()
    damage, message = OUTPUTS[case]
    damage(run, monkeypatch)
    result = altbench("report", run)
    monkeypatch.undo()
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"altbench: error: cannot write {run}") and message in line, line
    assert rundir.store_path(run).read_bytes() == store
    assert not list(run.rglob("*.partial*"))
