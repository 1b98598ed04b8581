"""A run directory: every command reads and writes one through this module, and nothing else does.

    <run>/suite.toml      the suite exactly as run (a resumed run re-reads it from here)
    <run>/env.json        the environment, and under "resumes" each `--resume` session that ran cells
    <run>/cells.jsonl     the store: one JSON row per line (runner/store.py says what a row holds)
    <run>/cells.<k>.jsonl shard k's rows, in a run spread over hosts (runner/cluster.py): each shard
                          appends to its own file only, as appends from several hosts to one file on a
                          network file system are not atomic; readers merge every store file
    <run>/env.<k>.json    shard k's host and versions; `read_env` shows them under "shards"
    <run>/jobs.json       the submitted shards: executor, and per shard its job id and cells
    <run>/.writer.lock    the writer's lock; <run>/.writer.json says who holds it (pid, host, since);
                          shard k's writer holds .writer.<k>.lock instead (one writer per store file)
    <run>/tables/ plots/ cells.parquet summary.md   rendered from the store (altbench.report)

Writes: a store row is appended whole (one write, then fsync); every other file is written to a
temporary file beside it and moved into place with `os.replace`, so a crash or a concurrent reader
never sees half a file. A file that cannot be written raises `UserError` naming its path.

Reads are tolerant: a store line that is not UTF-8, not JSON or not a row object, wherever it sits,
is skipped, with one warning on stderr naming the file, the lines and how many; every good row is
read. A missing, empty or damaged env.json reads as an unknown environment ({}) with one warning.

One writer: `hold_writer` takes an OS lock (flock, through `filelock`) that the kernel drops when
its process ends, however it ends, so `kill -9` leaves no stale lock; a second writer gets a
`UserError` naming the holder.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from altbench.errors import UserError, one_line
from altbench.runner.store import cell_of, row_problem

STORE_FILE = "cells.jsonl"
ENV_FILE = "env.json"
SUITE_FILE = "suite.toml"
LOCK_FILE = ".writer.lock"
HOLDER_FILE = ".writer.json"
JOBS_FILE = "jobs.json"

# env.json keys that readers index into, with the JSON type each must have.
ENV_TYPES = {
    "gpu": dict, "ceilings": dict, "triton_cache": dict, "inductor_cache": dict, "overrides": dict, "resumes": list, "gpu_busy": list,
    "shards": dict,
    "created_at": str, "suite": str, "command": str, "hostname": str, "cpu": str, "torch": str, "triton": str,
    "python": str, "git_commit": str, "device": str,
}

_warned: set[str] = set()
_held: dict[tuple[Path, str | None], object] = {}


def warn(message: str) -> None:
    """One line on stderr, at most once per command (`one_command`) for the same message."""
    if message not in _warned:
        _warned.add(message)
        print(f"altbench: warning: {one_line(message)}", file=sys.stderr)


@contextmanager
def one_command() -> Iterator[None]:
    """The scope of one command: a damaged file read many times in it is warned about once."""
    _warned.clear()
    try:
        yield
    finally:
        _warned.clear()


def store_path(run_dir: Path, shard: str | None = None) -> Path:
    """The run's store file, or shard `shard`'s own."""
    return Path(run_dir) / (STORE_FILE if shard is None else f"cells.{shard}.jsonl")


def run_files(run_dir: Path) -> list[Path]:
    """The files that hold a run's results, wherever they exist: its store files, suite, env.json and
    the shards' env files (what a copy of the run, e.g. a new gate baseline, needs)."""
    run_dir = Path(run_dir)
    files = [*store_files(run_dir), run_dir / SUITE_FILE, run_dir / ENV_FILE, *sorted(run_dir.glob("env.*.json"))]
    return [p for p in files if p.is_file()]


def store_files(run_dir: Path) -> list[Path]:
    """Every store file of the run: cells.jsonl, then the shards' files in shard order."""
    shards = [p for p in Path(run_dir).glob("cells.*.jsonl") if not p.name.startswith(".")]
    return [store_path(run_dir), *sorted(shards, key=lambda p: (len(p.name), p.name))]


def is_file(path: Path) -> bool:
    """Whether `path` (often typed by a user) is a file: False too where it cannot even be looked up
    (a name too long, a NUL in it)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def is_dir(path: Path) -> bool:
    """Whether `path` is a directory, False where it cannot be looked up (see `is_file`)."""
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


# --- writing ----------------------------------------------------------------------------------

def _unwritable(path: Path, error: OSError) -> UserError:
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        reason = "a file stands where a directory is needed"
    else:
        reason = error.strerror or str(error)
    return UserError(f"cannot write {path}: {reason}")


def output_dir(path: Path) -> Path:
    """`path` as a directory to write into, created with its parents; UserError naming it otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e) from None
    return path


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside `path` (same suffix, so writers that infer a format from it
    still do) for the block to fill; when the block ends cleanly it replaces `path` in one step,
    otherwise it is removed. An OSError on the way becomes a UserError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise _unwritable(path, e) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # its directory is gone or is not one: nothing was left there
        pass


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2, default=str))


def create(out: Path, name: str) -> Path:
    """A new, empty run directory `<out>/<name>-<timestamp>[-n]`; UserError when `out` is not writable.
    On failure nothing that this call created is left behind."""
    out = Path(out)
    missing = [p for p in (out, *out.parents) if not p.exists()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        run_dir, n = out / f"{name}-{stamp}", 1
        while run_dir.exists():
            n += 1
            run_dir = out / f"{name}-{stamp}-{n}"
        run_dir.mkdir()
    except OSError as e:
        for path in missing:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise UserError(f"cannot write results under {out}: {e.strerror}; pass a writable directory with --out") from None
    return run_dir


def _finite(value):
    """NaN / inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def append_row(run_dir: Path, row: dict, shard: str | None = None) -> None:
    """Append one complete line (one write, then fsync) to the store, or to shard `shard`'s file; a
    torn last line left by a crash is ended first, so this row stays whole and on its own line."""
    row = {k: _finite(v) for k, v in row.items()}
    line = (json.dumps(row, default=str, allow_nan=False) + "\n").encode()
    path = store_path(run_dir, shard)
    try:
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _unwritable(path, e) from None


def ensure_store(run_dir: Path) -> Path:
    """The run's cells.jsonl, created empty if missing: a run whose rows all sit in shard files is
    still found, like any run, by its cells.jsonl."""
    path = store_path(run_dir)
    if not path.exists():
        write_bytes(path, b"")
    return path


# --- reading ----------------------------------------------------------------------------------

def _ranges(numbers: list[int], shown: int = 5) -> str:
    """[3, 4, 5, 9] -> "3-5, 9" (the first `shown` ranges, then "...")."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = [str(a) if a == b else f"{a}-{b}" for a, b in spans]
    return ", ".join(text[:shown]) + (", ..." if len(text) > shown else "")


def _row(line: bytes) -> dict | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if row_problem(value) is None else None


def read_rows(run_dir: Path) -> list[dict]:
    """Every good row of the run's store files (`store_files`), each file in the order written ([] when
    there is none). Damaged lines are skipped with one warning per file that names them."""
    return [row for path in store_files(run_dir) for row in _read_store(path)]


def _read_store(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    rows, damaged = [], []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        row = _row(line)
        if row is None:
            damaged.append(number)
        else:
            rows.append(row)
    if damaged:
        lines = "line" if len(damaged) == 1 else "lines"
        warn(f"{path}: skipped {len(damaged)} damaged {lines} ({lines} {_ranges(damaged)}: not UTF-8, not JSON "
             "or not a row); every other row was read")
    return rows


def latest_rows(run_dir: Path) -> list[dict]:
    """The rows of each cell's last attempt (`--resume --retry` may have run a cell again; the rows of
    one attempt share its started_at; across store files the later start wins), in the order read."""
    rows = read_rows(run_dir)
    last: dict[str, float | None] = {}
    for row in rows:
        cell, started = cell_of(row), row.get("started_at")
        if cell not in last or (started or 0) >= (last[cell] or 0):
            last[cell] = started
    return list({row["cell_id"]: row for row in rows if row.get("started_at") == last[cell_of(row)]}.values())


def read_env(run_dir: Path, quiet: bool = False) -> dict:
    """env.json as a dict, with each shard's env.<k>.json under "shards" (shard -> its session); {} (an
    unknown environment) when env.json is missing, empty or not a JSON object, with one warning unless
    `quiet`. Known keys holding the wrong type are dropped, and damaged shard files skipped, with a warning."""
    env = _typed_env(Path(run_dir) / ENV_FILE, quiet, "the environment of these results is unknown")
    shards = {}
    for path in sorted(Path(run_dir).glob("env.*.json")):
        if session := _typed_env(path, quiet, "that shard's environment is unknown"):
            shards[path.name[len("env."):-len(".json")]] = session
    if shards:
        env["shards"] = shards
    return env


def _typed_env(path: Path, quiet: bool, unknown: str) -> dict:
    env = _read_object(path, quiet, unknown)
    wrong = [k for k, t in ENV_TYPES.items() if env.get(k) is not None and not isinstance(env[k], t)]
    wrong += [k for k, t in (("resumes", dict), ("gpu_busy", str))
              if k not in wrong and not all(isinstance(v, t) for v in env.get(k) or [])]
    if wrong and not quiet:
        warn(f"{path}: ignored {', '.join(wrong)} (unexpected values); that part of the environment is unknown")
    return {k: v for k, v in env.items() if k not in wrong}


def _read_object(path: Path, quiet: bool, unknown: str) -> dict:
    """A JSON object file; {} when missing, unreadable or not one, with one warning (ending `unknown`) unless `quiet`."""
    env, problem = {}, ""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problem = "is missing"
    except OSError as e:
        problem = f"cannot be read ({e.strerror})"
    else:
        try:
            env = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            problem = "is empty" if not data.strip() else "is damaged (not UTF-8 JSON)"
        if not problem and not isinstance(env, dict):
            env, problem = {}, "is damaged (not a JSON object)"
    if problem:
        if not quiet:
            warn(f"{path} {problem}: {unknown}")
        return {}
    return env


def write_env(run_dir: Path, env: dict, shard: str | None = None) -> Path:
    """Write env.json (its "shards" key is read from the shards' own files, never written here), or
    shard `shard`'s session to its own env.<k>.json: shards on several hosts never rewrite one file."""
    if shard is not None:
        return write_json(Path(run_dir) / f"env.{shard}.json", env)
    return write_json(Path(run_dir) / ENV_FILE, {k: v for k, v in env.items() if k != "shards"})


def read_jobs(run_dir: Path) -> dict:
    """jobs.json (the shards submitted, see runner/cluster.py), or {} for a run never submitted; a
    damaged one reads as {} with one warning."""
    if not (Path(run_dir) / JOBS_FILE).exists():
        return {}
    jobs = _read_object(Path(run_dir) / JOBS_FILE, False, "the submitted jobs are unknown")
    if not isinstance(jobs.get("shards", []), list) or not all(isinstance(s, dict) for s in jobs.get("shards", [])):
        warn(f"{Path(run_dir) / JOBS_FILE} is damaged (shards is not a list of objects): the submitted jobs are unknown")
        return {}
    return jobs


def write_jobs(run_dir: Path, jobs: dict) -> Path:
    return write_json(Path(run_dir) / JOBS_FILE, jobs)


# --- the writer's lock ------------------------------------------------------------------------

def _lock_files(shard: str | None) -> tuple[str, str]:
    return (LOCK_FILE, HOLDER_FILE) if shard is None else (f".writer.{shard}.lock", f".writer.{shard}.json")


def _holder_facts(run_dir: Path, shard: str | None = None) -> dict | None:
    """The side file's pid, host and since, or None while it is missing, unreadable or names a process
    of this host that is gone (a writer killed before a new one recorded itself)."""
    try:
        facts = json.loads((Path(run_dir) / _lock_files(shard)[1]).read_text())
        pid, host = int(facts["pid"]), str(facts["host"])
        str(facts["since"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
    return facts


def holder(run_dir: Path, wait_s: float = 2.0, shard: str | None = None) -> str:
    """Who holds the writer's lock (or shard `shard`'s), as its side file records it; a writer that has
    just taken the lock records itself within moments, so this waits up to `wait_s` for a live record."""
    deadline = time.monotonic() + wait_s
    while (facts := _holder_facts(run_dir, shard)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if facts is None:
        return "another process (it has not recorded its pid)"
    return f"pid {facts['pid']} on {facts['host']} since {facts['since']}"


def hold_writer(run_dir: Path, shard: str | None = None) -> None:
    """Make this process the run directory's one writer (or shard `shard`'s: the writer of its store and
    env files) until `release_writer` or its exit (a second call from the same process is a no-op).
    UserError naming the holder when another process writes it."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir).resolve()
    if (run_dir, shard) in _held:
        return
    lock_file, holder_file = _lock_files(shard)
    lock = FileLock(run_dir / lock_file, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        what = str(run_dir) if shard is None else f"shard {shard} of {run_dir}"
        raise UserError(f"{what} is being written by {holder(run_dir, shard=shard)}; wait for it to finish "
                        f"(or stop it), then run `altbench run --resume {run_dir}`") from None
    except OSError as e:
        raise _unwritable(run_dir / lock_file, e) from None
    _held[run_dir, shard] = lock
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(run_dir / holder_file, {"pid": os.getpid(), "host": socket.gethostname(), "since": since})


def release_writer(run_dir: Path, shard: str | None = None) -> None:
    """Give up the writer's lock taken by `hold_writer` (nothing when this process holds none)."""
    lock = _held.pop((Path(run_dir).resolve(), shard), None)
    if lock is not None:
        (Path(run_dir) / _lock_files(shard)[1]).unlink(missing_ok=True)
        lock.release()
