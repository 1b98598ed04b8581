"""Reports read a run's store and nothing else: no model code runs here, so a laptop can render
results produced on a GPU.

    render_run(run_dir)   <run>/tables/*.md|csv, <run>/plots/*.png|svg, <run>/cells.parquet,
                          <run>/summary.md                                      (this module)
    tables.py             one Markdown + CSV table per measurement
    plots.py              cost vs L, memory vs L, decode vs context, fraction of device ceilings
    scaling.py            scaling exponents over the compute-bound lengths
    compare.py            several architectures side by side, with ratios to the first

pandas and matplotlib are imported inside the functions that use them, so importing this package
(the CLI, `altbench.gate`) stays cheap.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from altbench.errors import UserError
from altbench.runner import rundir, store
from altbench.runner.cells import NOT_APPLICABLE

# Row fields that, with measurement and seq_len, say which series a cell belongs to.
SERIES_FIELDS = ("arch", "size", "backend", "dtype", "device", "batch", "task", "metric")
TIMED = ("prefill", "decode", "train_step", "kernel", "generate", "reasoning")  # the measurements whose figure is a time
CAPABILITY = ("probe", "lm_eval")  # the measurements whose figure is a metric value
STATUS_LABELS = {"ok": "ok", "oom": "OOM", "error": "error", "timeout": "timeout", "skipped": "skipped"}


def status_label(row: dict) -> str:
    """The word a table prints for a row that did not run: "n/a" where the measurement does not apply."""
    status = row.get("status") or "unknown"
    if status == "skipped" and str(row.get("message", "")).startswith(NOT_APPLICABLE):
        return "n/a"
    return STATUS_LABELS.get(status, status)


def load_rows(run_dir: Path) -> list[dict]:
    """The run's rows (one per cell, the last written); UserError when the directory holds no store."""
    run_dir = Path(run_dir)
    if not rundir.is_file(rundir.store_path(run_dir)):
        raise UserError(f"{run_dir} is not a run directory (no {rundir.STORE_FILE}); give a path that `altbench run` printed")
    rows = rundir.latest_rows(run_dir)
    if not rows:
        raise UserError(f"{rundir.store_path(run_dir)} holds no readable finished cell; run or resume the suite first")
    return rows


def resolve_run(ref: Path, root: Path, option: str) -> Path:
    """A run given (with the CLI option `option`) as its directory or as a run id under `root`;
    UserError when neither holds a store."""
    for candidate in (Path(ref), Path(root) / ref):
        if rundir.is_file(rundir.store_path(candidate)):
            return candidate
    recent = ", ".join(run.name for run in runs_under(root)[-5:])
    raise UserError(f"{option}: run '{ref}' not found: no {rundir.STORE_FILE} there or under {root}"
                    + (f" (recent runs: {recent})" if recent else ""))


def runs_under(root: Path) -> list[Path]:
    """Every run directory below `root` (a directory holding a store), oldest first.

    Age is env.json's created_at, or the store's modification time where that is missing.
    """

    def created(run: Path) -> float:
        stamp = rundir.read_env(run, quiet=True).get("created_at")
        try:
            return datetime.datetime.fromisoformat(stamp).timestamp()
        except (TypeError, ValueError):
            return rundir.store_path(run).stat().st_mtime

    root = Path(root)
    runs = [p.parent for p in root.rglob(rundir.STORE_FILE)] if rundir.is_dir(root) else []
    return sorted(runs, key=lambda run: (created(run), str(run)))


def export_parquet(rows: list[dict], path: Path) -> Path:
    """The rows as a Parquet file (written atomically); dict-valued fields (and lists Arrow cannot
    type) become JSON text."""
    import pandas as pd
    import pyarrow as pa

    frame = pd.DataFrame.from_records(rows)
    for column in frame.columns:
        values = frame[column].tolist()
        if frame[column].dtype != object:
            continue
        nested = any(isinstance(v, dict) for v in values)
        if not nested:
            try:
                pa.array(values, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                nested = True
        if nested:
            frame[column] = [None if v is None else json.dumps(v, default=str) for v in values]
    with rundir.atomic(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def _env_headline(run_dir: Path, env: dict) -> list[str]:
    gpu = env.get("gpu")
    if gpu:
        memory = f", {gpu['memory_bytes'] / 2**30:.0f} GiB" if gpu.get("memory_bytes") else ""
        device = (f"{gpu.get('name')} x{gpu.get('count', 1)}{memory}, driver {gpu.get('driver')}, "
                  f"CUDA {gpu.get('cuda')}")
    else:
        device = f"no GPU; CPU {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores)"
    ceilings = env.get("ceilings")
    ceiling = (f"copy {ceilings['copy_gbs']:,.0f} GB/s, bf16 matmul {ceilings['matmul_bf16_tflops']:,.0f} TFLOP/s"
               if ceilings else "not measured")
    if ceilings and ceilings.get("launch_us"):
        ceiling += f"; host {ceilings['launch_us']:.1f} us per eager kernel launch (CPU {env.get('cpu', '?')})"
    commit = env.get("git_commit")
    code = f"git {commit[:12]}{' (uncommitted changes)' if env.get('git_dirty') else ''}" if commit else "not a git checkout"
    lines = [
        f"# Run `{run_dir.name}`" + (f" (suite {env['suite']})" if env.get("suite") else ""),
        "",
        f"- device: {device}",
        f"- software: torch {env.get('torch', '?')}, triton {env.get('triton') or 'not installed'}, "
        f"Python {env.get('python', '?')}",
        f"- code: {code}",
        f"- device ceilings: {ceiling}",
        f"- command: `{env.get('command', '?')}` on {env.get('hostname', '?')}, {env.get('created_at', '?')}",
    ]
    if env.get("triton_cache"):
        lines.append(f"- Triton cache at start: {_cache_state(env['triton_cache'])}")
    lines += _resumed_lines(env) + _shard_lines(env)
    if env.get("gpu_busy"):
        lines.append(f"- **warning**: other processes were using the GPU: {'; '.join(env['gpu_busy'])}")
    if not env:
        lines.append(f"- {rundir.ENV_FILE} is missing or damaged: the environment of these results is unknown")
    return lines


def _cache_state(cache: dict) -> str:
    if not cache.get("entries"):
        return f"empty (`{cache.get('dir')}`): first calls include compiling and autotuning"
    return (f"{cache['entries']} entries in `{cache.get('dir')}`: kernels found there load instead of compiling, "
            "so first calls are not compile times")


def _setup(env: dict) -> dict:
    """The facts that make timings comparable across the sessions of one run."""
    gpu = env.get("gpu") or {}
    return {"GPU": gpu.get("name"), "driver": gpu.get("driver"), "torch": env.get("torch"),
            "triton": env.get("triton"), "commit": (env.get("git_commit") or "")[:12], "CPU": env.get("cpu")}


def _resumed_lines(env: dict) -> list[str]:
    """One line per `--resume` session (cells started after its time ran there), and a warning when
    one ran on a different setup than the first."""
    lines = []
    first = _setup(env)
    for session in env.get("resumes", []):
        launch = (session.get("ceilings") or {}).get("launch_us")
        launch = f", host {launch:.1f} us per eager launch" if launch else ""
        cache = f"; Triton cache {_cache_state(session['triton_cache'])}" if session.get("triton_cache") else ""
        lines.append(f"- resumed: `{session.get('command', '?')}` on {session.get('hostname', '?')}, "
                     f"{session.get('created_at', '?')}{launch}{cache}")
        changed = [f"{k} {first[k]} -> {v}" for k, v in _setup(session).items() if v != first[k]]
        if changed:
            lines.append(f"- **warning**: that session ran on a different setup ({'; '.join(changed)}); "
                         "cells started after it are not comparable one-to-one with earlier ones")
    return lines


def _shard_lines(env: dict) -> list[str]:
    """One line per shard of a run spread over jobs (runner/cluster.py): where its cells ran, and a
    warning when the shards ran on different setups."""
    shards = env.get("shards") or {}
    lines = [f"- shard {name}: {s.get('hostname', '?')}, " + ", ".join(f"{k} {v}" for k, v in _setup(s).items() if v)
             for name, s in shards.items()]
    if len({tuple(_setup(s).values()) for s in shards.values()}) > 1:
        lines.append("- **warning**: the shards ran on different setups; cells of different shards are not "
                     "comparable one-to-one")
    return lines


def not_reached(run_dir: Path, env: dict) -> dict[str, int]:
    """Per measurement, the cells of the run's suite that have no row yet ({} when its suite.toml is
    missing or no longer loads)."""
    from altbench.runner import run

    if not (Path(run_dir) / rundir.SUITE_FILE).is_file():
        return {}
    try:
        cells = run.run_cells(Path(run_dir), env)
    except UserError:
        return {}
    done = run.finished(Path(run_dir))
    counts: dict[str, int] = {}
    for cell in cells:
        if cell.cell_id not in done:
            counts[cell.measurement] = counts.get(cell.measurement, 0) + 1
    return counts


def write_summary(run_dir: Path, rows: list[dict], env: dict, written: list[Path]) -> Path:
    """<run>/summary.md: the environment, cell counts by status, links to every table and plot."""
    from altbench.report.fairness import fairness_lines
    from altbench.report.tables import ordered_measurements, with_bounds

    lines = _env_headline(run_dir, env)
    missing = not_reached(run_dir, env)
    labels = dict(STATUS_LABELS)
    if any(store.outcome(r) == "diverged" for r in rows):
        labels["diverged"] = "diverged"
    lines += ["", "## Cells", "", "| measurement | " + " | ".join(labels.values()) + " | not reached |",
              "|---|" + "---:|" * (len(labels) + 1)]
    for measurement in dict.fromkeys([*ordered_measurements(rows), *missing]):
        outcomes = [store.outcome(r) for r in rows if r.get("measurement") == measurement]
        counts = [outcomes.count(s) for s in labels] + [missing.get(measurement, 0)]
        lines.append(f"| {measurement} | " + " | ".join(map(str, counts)) + " |")
    if missing:
        lines += ["", f"**Incomplete run**: {sum(missing.values())} cells of the suite have no row yet; "
                  f"`altbench run --resume {run_dir}` runs them."]
    if "diverged" in labels:
        lines += ["", f"Probe rows whose training loss turned NaN count as diverged, not as accuracies; "
                  f"`altbench run --resume {run_dir} --retry diverged` trains them again."]
    lines += fairness_lines(with_bounds(rows, env), [m for m in ordered_measurements(rows) if m in TIMED])
    lines += ["", "## Tables", ""]
    for path in written:
        if path.suffix == ".md" and path.parent.name == "tables":
            csv = path.with_suffix(".csv")
            link = f" ([csv](tables/{csv.name}))" if csv in written else ""
            lines.append(f"- [{path.stem}](tables/{path.name}){link}")
    plots = [p for p in written if p.suffix == ".png"]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})  \n[svg](plots/{p.with_suffix('.svg').name})" for p in plots]
    lines += ["", f"Raw rows: [{rundir.STORE_FILE}]({rundir.STORE_FILE}) (the store), [cells.parquet](cells.parquet).", ""]
    return rundir.write_text(run_dir / "summary.md", "\n".join(lines))


def render_run(run_dir: Path) -> list[Path]:
    """Render every table and plot of a run from its store; returns the paths written."""
    from altbench.report import plots, tables

    run_dir = Path(run_dir)
    rows = load_rows(run_dir)
    env = rundir.read_env(run_dir)
    written = tables.write_tables(rows, env, rundir.output_dir(run_dir / "tables"))
    written += plots.write_plots(rows, env, rundir.output_dir(run_dir / "plots"))
    written.append(export_parquet(rows, run_dir / "cells.parquet"))
    written.append(write_summary(run_dir, rows, env, written))
    return written
