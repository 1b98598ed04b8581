"""The `altbench` command. Each command's docstring is its help text.

User mistakes raise `UserError` anywhere below; `main` turns them, and the usage errors typer
finds in options, into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from altbench.errors import UserError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark the architectures challenging the Transformer.")
console = Console()

OutDir = Annotated[Path, typer.Option("--out", help="Results root: each run writes <out>/<run-id>/.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: the suite's).")]


def _fmt_ms(row: dict) -> str:
    from altbench.report import status_label

    if row.get("status") != "ok":
        label = status_label(row)
        return label if label == "n/a" else label.upper()
    value = row.get("ms_median")
    return f"{value:.3g}" if value is not None else "-"


def _names(option: str | None) -> list[str] | None:
    """A comma-separated option as a list of names (None when not given)."""
    return [n.strip() for n in option.split(",") if n.strip()] if option else None


def _fmt_bytes(n) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


@app.command("list")
def list_() -> None:
    """Architectures with their named sizes and parameter counts, backends, and suites."""
    from altbench import registry
    from altbench.runner import suite as suites

    archs = Table(title="architectures (parameters, analytic)", title_justify="left")
    archs.add_column("arch")
    archs.add_column("sizes")
    for arch in registry.ARCHITECTURES:
        sizes = []
        for s in registry.size_names(arch):
            total, active = registry.param_counts(arch, s)
            sizes.append(f"{s} ({total / 1e6:,.1f}M" + (f", {active / 1e6:,.1f}M active)" if active < total else ")"))
        archs.add_row(arch, ", ".join(sizes))
    console.print(archs)

    backends = Table(title="backends", title_justify="left")
    for col in ("backend", "installed", "what"):
        backends.add_column(col)
    for name, (_, what) in registry.BACKENDS.items():
        backends.add_row(name, "yes" if registry.backend_installed(name) else "no", what)
    console.print(backends)

    table = Table(title="suites", title_justify="left")
    table.add_column("suite")
    table.add_column("description")
    for name in suites.known_suites():
        table.add_row(name, suites.load(name).description)
    console.print(table)


def _summary_table(rows: list[dict]) -> Table:
    """One line per cell; axes that are the same in every row go to the title."""
    constant = [k for k in ("backend", "dtype", "device", "batch") if len({r.get(k) for r in rows}) == 1]
    title = "results" + ("".join(f", {k} {rows[0][k]}" for k in constant) if rows else "")
    varying = [k for k in ("backend", "dtype", "batch") if k not in constant]
    table = Table(title=title, title_justify="left")
    for col in ("measurement", "model", *varying, "L", "ms median [95% CI]", "tokens/s", "peak mem"):
        table.add_column(col, justify="left" if col in ("measurement", "model", "backend", "dtype") else "right")
    for r in rows:
        ok = r.get("status") == "ok"
        low, high = r.get("ms_ci_low"), r.get("ms_ci_high")
        ci = f" [{low:.3g}, {high:.3g}]" if ok and low is not None and high is not None else ""
        tps = r.get("tokens_per_s")
        table.add_row(
            str(r.get("measurement")), " ".join(str(r[k]) for k in ("arch", "size", "task") if r.get(k)),
            *[str(r.get(k)) for k in varying],
            str(r.get("seq_len")),
            _fmt_ms(r) + ci, f"{tps:,.0f}" if ok and tps else "-", _fmt_bytes(r.get("peak_mem_bytes")),
        )
    return table


def _sweep_with_progress(run_dir: Path, cells: list, done: set[str], gpus: int = 1, workers_per_gpu: int = 1) -> None:
    """The runner's sweep under a rich progress bar naming the cell in flight."""
    from altbench.runner import run as runner

    todo = [c for c in cells if c.cell_id not in done]
    console.print(f"run [bold]{run_dir}[/]: {len(todo)} cells to run" + (f", {len(done)} already done" if done else ""))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(todo))
        runner.sweep(
            run_dir, cells, done,
            on_start=lambda c: progress.update(task, description=f"{c.measurement} {c.arch}/{c.size} L={c.seq_len}"),
            on_row=lambda row: progress.advance(task), gpus=gpus, workers_per_gpu=workers_per_gpu,
        )


@app.command()
def run(
    suite: Annotated[Optional[str], typer.Option("--suite", help="Suite name (see `altbench list`) or path to a .toml.")] = None,
    device: Device = None,
    out: OutDir = Path("results"),
    resume: Annotated[Optional[str], typer.Option("--resume", help="Run id or directory to finish; done cells are skipped.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="Run cells in parallel, one worker per GPU.")] = 1,
    workers_per_gpu: Annotated[int, typer.Option("--workers-per-gpu", min=1, help="Workers sharing each GPU; probe and lm_eval suites only (untimed).")] = 1,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local Hugging Face checkpoint to load instead of random weights (suite with one arch and size).")] = None,
    archs: Annotated[Optional[str], typer.Option("--archs", help="Run the suite for these architectures only, comma-separated (a new run).")] = None,
    backends: Annotated[Optional[str], typer.Option("--backends", help="Run the suite on these backends only, comma-separated (a new run), e.g. fla,mamba_ssm.")] = None,
    retry: Annotated[Optional[str], typer.Option("--retry", help="With --resume: also re-run cells whose last outcome is one of these, comma-separated (error, timeout, oom, skipped, diverged); earlier rows stay in the store.")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local (this process), slurm (one job per node through submitit) or submitit-local (the same jobs on this machine).")] = "local",
    nodes: Annotated[int, typer.Option("--nodes", help="Shards: one job (Slurm array task) on one node each.")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs each job asks for; its sweep runs one worker per GPU.")] = 1,
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition of the jobs.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Slurm account charged for the jobs.")] = None,
    time_min: Annotated[Optional[int], typer.Option("--time", help="Each job's time limit in minutes; a job past it (or preempted) is requeued and skips its stored cells.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="With --executor slurm or submitit-local: show progress until every job ends, then the tables.")] = False,
) -> None:
    """Run a suite: each cell in an isolated worker, each result stored as it lands, then tables and plots.

    With --executor slurm (or submitit-local) the cells are split into --nodes shards, one submitit job
    each; the command prints the run directory and job ids and returns (see docs/cluster.md)."""
    from altbench import report
    from altbench.runner import cluster, rundir
    from altbench.runner import run as runner

    retried = tuple(_names(retry) or ())
    resources = cluster.Resources(executor, nodes, gpus_per_node, workers_per_gpu, partition, account, time_min)
    cluster.check(resources, gpus)
    sharded = executor != "local"
    run_dir, cells, done = runner.prepare(suite, resume, device, out, archs=_names(archs), backends=_names(backends),
                                          weights=str(weights) if weights else None, retry=retried, gpus=gpus,
                                          workers_per_gpu=workers_per_gpu, sharded=sharded)
    if sharded:
        _submit(run_dir, cells, done, resources, retried, wait)
        return
    try:
        for process in rundir.read_env(run_dir, quiet=True).get("gpu_busy") or []:
            console.print(f"[yellow]warning:[/] another process is using the GPU ({process}); timings may be distorted")
        try:
            _sweep_with_progress(run_dir, cells, done, gpus, workers_per_gpu)
        except KeyboardInterrupt:
            print(f"interrupted: finished cells are stored in {run_dir}; finish with: altbench run --resume {run_dir}",
                  file=sys.stderr)
            raise typer.Exit(130)
        rows = rundir.latest_rows(run_dir)
        console.print(_summary_table(rows))
        failed = [r for r in rows if r["status"] not in ("ok", "skipped")]
        for r in failed:
            console.print(f"[red]{r['status']}[/] {r['cell_id']}: {r.get('message', '')}")
        report.render_run(run_dir)
    finally:
        rundir.release_writer(run_dir)
    console.print(f"tables and plots: {run_dir / 'tables'}, {run_dir / 'plots'}")
    print(run_dir)


def _submit(run_dir: Path, cells: list, done: set[str], resources, retry: tuple[str, ...], wait: bool) -> None:
    """Submit the run's missing cells as shards (this process is the run's writer until they are
    recorded), print the run directory and job ids, and with `wait` follow them to the end."""
    from altbench import report
    from altbench.runner import cluster, rundir
    from altbench.runner import run as runner

    try:
        device = rundir.read_env(run_dir, quiet=True).get("device") or cells[0].device
        jobs = cluster.submit(run_dir, cells, done, resources, device, retry)
    finally:
        rundir.release_writer(run_dir)
    todo = {c.cell_id for c in cells if c.cell_id not in done}
    console.print(f"run [bold]{run_dir}[/]: {len(todo)} cells to run in {len(jobs)} {resources.executor} job(s)"
                  + (f", {len(done)} already done" if done else ""))
    recorded = rundir.read_jobs(run_dir).get("shards", [])
    for shard in recorded[len(recorded) - len(jobs):]:
        print(f"shard {shard['shard']}: job {shard['job_id']}, {len(shard['cells'])} cells")
    if wait and jobs:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(f"{len(jobs)} job(s)", total=len(todo))
            try:
                while True:
                    left = sum(not job.done() for job in jobs)
                    progress.update(task, completed=len(todo & runner.finished(run_dir)),
                                    description=f"{left} of {len(jobs)} job(s) not finished")
                    if not left:
                        break
                    time.sleep(1.0)
            except KeyboardInterrupt:  # the jobs are not this command's to stop
                print(f"stopped waiting; the jobs go on: altbench status {run_dir}", file=sys.stderr)
                raise typer.Exit(130)
        failed = [(job, job.exception()) for job in jobs if job.exception() is not None]
        for job, error in failed:
            print(f"job {job.job_id} failed: {one_line(str(error).strip().splitlines()[-1] if str(error).strip() else repr(error))}",
                  file=sys.stderr)
        rows = rundir.latest_rows(run_dir)
        if rows:
            console.print(_summary_table(rows))
            report.render_run(run_dir)
        if failed or todo - runner.finished(run_dir):
            print(f"cells are missing: finish with `altbench run --resume {run_dir} --executor {resources.executor}`",
                  file=sys.stderr)
            print(run_dir)
            raise typer.Exit(1)
    print(run_dir)


@app.command("status")
def status_(run_dir: Annotated[Path, typer.Argument(help="A run directory submitted with --executor slurm or submitit-local.")]) -> None:
    """Cells done / running / left per shard of a submitted run, and each job's state as submitit reports it."""
    from altbench.runner import cluster, rundir

    if not rundir.is_file(rundir.store_path(run_dir)):
        raise UserError(f"{run_dir} is not a run directory (no {rundir.STORE_FILE}); give a path that `altbench run` printed")
    shards = cluster.shard_status(run_dir)
    if not shards:
        raise UserError(f"{run_dir} was run here, not submitted as jobs (no {rundir.JOBS_FILE}); `altbench report {run_dir}` shows its cells")
    table = Table(title=f"{run_dir}: shards", title_justify="left")
    for col in ("shard", "job", "state", "done", "running", "left"):
        table.add_column(col, justify="right" if col in ("done", "running", "left") else "left")
    for s in shards:
        table.add_row(s["shard"], s["job_id"], s["state"], str(s["done"]), str(s["running"]), str(s["left"]))
    console.print(table)


@app.command("report")
def report_(run_dir: Annotated[Path, typer.Argument(help="A run directory (holds cells.jsonl).")]) -> None:
    """Re-render a run's tables and plots from its store alone (no model code runs)."""
    from altbench import report

    for path in report.render_run(run_dir):
        print(path)


@app.command("eval")
def eval_(
    arch: Annotated[str, typer.Option("--arch", help="Architecture (see `altbench list`).")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated lm-eval tasks (local YAML tasks work offline).")],
    size: Annotated[Optional[str], typer.Option("--size", help="Named size; with --weights, checked against the checkpoint.")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local Hugging Face checkpoint directory.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many examples per task.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    include: Annotated[Optional[list[Path]], typer.Option("--include", help="Extra folder of task YAMLs.")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=2, help="Tokens per forward (default: the checkpoint's, as lm-eval's HF backend; 2048).")] = None,
    prefix_token_id: Annotated[Optional[int], typer.Option("--prefix-token-id", help="Token that conditions empty contexts and rolling windows (default: BOS, else EOS).")] = None,
    add_bos_token: Annotated[Optional[bool], typer.Option("--add-bos-token/--no-add-bos-token", help="Add BOS when encoding (default: as the tokenizer does).")] = None,
    carry_state: Annotated[bool, typer.Option("--carry-state", help="Rolling log-likelihood in one pass, the state carried across max-length windows (lm-eval restarts each window).")] = False,
    mc_samples: Annotated[int, typer.Option("--mc-samples", min=1, help="Masked diffusion models (llada): Monte-Carlo draws per log-likelihood.")] = 128,
    out: OutDir = Path("results"),
) -> None:
    """Score an altbench model on lm-eval tasks as lm-eval's HF backend (--model hf) would; the scores land in a run's store beside speed."""
    from altbench import report
    from altbench.evaluation import run_eval
    from altbench.measure import env as envmod
    from altbench.runner import rundir
    from altbench.runner import run as runner

    runner.check_device(device)
    if size is None and weights is None:
        raise UserError("give --size NAME (random weights) or --weights PATH (a local checkpoint)")
    for folder in include or []:
        if not rundir.is_dir(folder):
            raise UserError(f"--include {folder}: not a directory; give a folder of lm-eval task YAMLs")
    rows = run_eval(arch, size, tasks.split(","), device, weights=str(weights) if weights else None, limit=limit,
                    batch_size=batch_size, include_path=[str(p) for p in include] if include else None,
                    max_length=max_length, prefix_token_id=prefix_token_id, add_bos_token=add_bos_token,
                    carry_state=carry_state, mc_samples=mc_samples)
    run_dir = rundir.create(out, "eval")
    rundir.hold_writer(run_dir)
    rundir.write_env(run_dir, {**envmod.capture(sys.argv, "eval"), "device": device})
    for i, r in enumerate(rows):
        cell = f"lm_eval/{r['task']}/{arch}/{size or weights}/torch/{device}"
        rundir.append_row(run_dir, {"cell_id": f"{cell}/{i}", "cell": cell, "arch": arch, "size": size or str(weights),
                                    "backend": "torch", "measurement": "lm_eval", "dtype": "auto", "device": device,
                                    "batch": batch_size, "seq_len": 0, "status": "ok", "message": "", "run_id": run_dir.name, **r})
    table = Table(title=f"lm-eval: {arch} {size or weights}", title_justify="left")
    for col in ("task", "metric", "value", "stderr"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], r["metric"], f"{r['value']:.4f}", f"{r['stderr']:.4f}" if r.get("stderr") is not None else "-")
    console.print(table)
    report.render_run(run_dir)
    rundir.release_writer(run_dir)
    print(run_dir)


def main(args: list[str] | None = None) -> int:
    """Run one command (`args`, default the command line) and return its exit code: a user's
    mistake, ours or a usage error typer finds, is one line on stderr and exit code 2."""
    from altbench.runner import rundir

    # typer may run on its own copy of click: take click's base exception from one typer exports
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        with rundir.one_command():
            code = app(args=args, standalone_mode=False)
    except click_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `altbench` alone: the help
            print(e.format_message())
            return 2
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        message = e.format_message() + hint
    except UserError as e:
        message = str(e)
    else:
        return code if isinstance(code, int) else 0
    print(f"altbench: error: {one_line(message)}", file=sys.stderr)
    return 2


# --- reports on stored runs: compare, gate ------------------------------------------------------

RESULTS = Path("results")


@app.command("compare")
def compare_(
    archs: Annotated[list[str], typer.Argument(help="Architectures to compare; ratios are relative to the first.")],
    run: Annotated[Optional[list[Path]], typer.Option(
        "--run", help="A run directory or run id to read; repeat for several (default: every run under results/ holding these archs).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where the tables and plots go (default: results/compare/<A>-vs-<B>).")] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="First run this suite for these archs only (a new run), then compare.")] = None,
    device: Device = None,
) -> None:
    """Architectures side by side from stored runs: per measurement a table with ratios to the first arch, and overlaid plots.

    With --suite, the missing cells are measured first: the suite runs for the given architectures
    in a new run under results/, which joins the runs compared."""
    from altbench.report import compare as comparison, resolve_run
    from altbench.runner import run as runner

    from altbench.runner import rundir

    comparison.check_archs(archs)
    runs = [resolve_run(r, RESULTS, "--run") for r in run] if run else []
    if suite:
        from altbench import registry

        for arch in archs:  # named on the command line, not with --archs: say so before prepare could
            registry.family(arch)
        run_dir, cells, done = runner.prepare(suite, None, device, RESULTS, archs=archs)
        try:
            _sweep_with_progress(run_dir, cells, done)
        finally:
            rundir.release_writer(run_dir)
        runs.append(run_dir)
    runs = runs or comparison.find_runs(RESULTS, archs)
    paths = comparison.compare(comparison.read_runs(runs), archs, out or RESULTS / "compare" / "-vs-".join(archs))
    print(paths[0].read_text())
    for path in paths:
        print(path)


@app.command("gate")
def gate_(
    baseline: Annotated[Path, typer.Option("--baseline", help="The baseline run directory, e.g. results/baselines/h100.")],
    candidate: Annotated[Optional[Path], typer.Option(
        "--candidate", help="The run to judge (default: the newest run under results/, outside results/baselines/).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Slowdown that counts, as a fraction of the baseline median.")] = 0.05,
    allow_env_mismatch: Annotated[bool, typer.Option(
        "--allow-env-mismatch", help="Judge even when GPU, driver, torch or triton differ from the baseline's.")] = False,
    eager_min_len: Annotated[int, typer.Option(
        "--eager-min-len", min=0,
        help="Leave out eager cells shorter than this many tokens (host-bound); CUDA-graph decode is always judged.")] = 0,
    update_baseline: Annotated[bool, typer.Option(
        "--update-baseline", help="After printing the verdict, copy the candidate over the baseline and exit 0.")] = False,
    fail_undecided: Annotated[bool, typer.Option(
        "--fail-undecided", help="Fail on a slowdown past the threshold that the cell's samples are too few to decide.")] = False,
) -> None:
    """CI gate: judge a run against a baseline cell by cell; exit 1 on a real regression (docs/gate.md)."""
    from altbench import gate
    from altbench.report import resolve_run
    from altbench.runner import rundir

    candidate = resolve_run(candidate, RESULTS, "--candidate") if candidate else gate.newest_run(RESULTS, exclude=baseline)
    if update_baseline:
        if rundir.is_file(rundir.store_path(baseline)):
            try:
                print(gate.judge(baseline, candidate, threshold, allow_env_mismatch=True).markdown())
            except UserError as e:
                print(f"(not judged: {e})")
        for path in gate.update_baseline(candidate, baseline):
            print(path)
        return
    result = gate.judge(baseline, candidate, threshold, allow_env_mismatch=allow_env_mismatch, eager_min_len=eager_min_len,
                        fail_undecided=fail_undecided)
    print(result.markdown())
    raise typer.Exit(result.exit_code)
