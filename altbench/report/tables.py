"""One Markdown and one CSV table per measurement, in `<run>/tables/`.

Markdown is for reading. One line per series (the fields of `SERIES_FIELDS` that vary; those
that do not, such as a single dtype or batch, go into the header beside the unit and the number
of repetitions), one column per sequence length L. A timed cell reads "median [ci_low, ci_high]"
in ms (the 95% interval of the median), a capability cell "value ± stderr"; a cell that did not
run shows its status (OOM, error, timeout, skipped), explained under the table, and "–" marks a
length the suite did not ask for. Timed tables end with the scaling exponent and the lengths it
was fitted over (scaling.py), and are followed by peak memory and, for decode, time over the
bandwidth bound (bytes read per token / the device's copy bandwidth) when env.json has ceilings.
The generate table is followed by time and tokens/s against the denoising steps N, autoregressive
models beside (`generate_section`).
Probe tables are turned around: one line per task and axis point (a task may vary more than L),
with its chance accuracy, and one column per model.

CSV is for computing: one line per cell with the raw numbers, the derived fractions of the
device ceilings and the series' exponent.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from altbench.measure import roofline
from altbench.report import CAPABILITY, SERIES_FIELDS, TIMED, status_label
from altbench.report.scaling import GROWTH, Fit, fit_scaling
from altbench.runner import rundir, store

NOT_MEASURED = "–"
UNITS = {
    "prefill": "ms per forward pass over the batch's L tokens",
    "decode": "ms per decode step (one token per sequence) at context length L",
    "train_step": "ms per training step (forward, backward, AdamW) on the batch's L tokens",
    "kernel": "ms per call of the first layer's sequence mixer alone (attention, SSM or recurrence; no norm, MLP or head) over L tokens",
    "generate": "ms to generate G tokens after a prompt of L tokens (N denoising steps, or G autoregressive calls)",
    "reasoning": "ms per call answering the batch's puzzles of L tokens (per sample: divide by the batch); an iterative "
                 "model runs every segment (task c<cycles>-s<segments>), any other one forward pass (task 'forward')",
}
PROBE_TASKS = ("mqar", "selective_copying", "induction_heads", "copying", "sudoku")  # display order; others follow by name
PROBE_AXES = {"seq_len": "L", "num_kv_pairs": "kv", "num_tokens": "tokens", "power_a": "a", "blanks": "blanks"}  # axis -> short label
ALL_POINTS = "all points"  # the point of a failed probe cell in a task where no cell ran (its points are unknown)
CSV_FIELDS = (
    "cell_id", "measurement", *SERIES_FIELDS, "seq_len", "status", "ms_median", "ms_ci_low", "ms_ci_high", "reps",
    "warmup", "first_call_ms", "compile_ms", "compiled", "cuda_graphs", "fast_path_note", "tokens_per_s", "flops",
    "tflops", "gen_length", "steps", "block_length", "model_calls", "bandwidth_gbs", "bytes_per_token", "bytes_moved", "compute_bound_ms", "memory_bound_ms", "bound_ms",
    "roofline_frac", "implementation_bound", "joules_per_token", "energy_note", "matmul_ceiling_fraction", "copy_ceiling_fraction", "peak_mem_bytes", "mem_source", "predicted_mem_bytes",
    "state_bytes", "params", "value", "stderr", "chance", "num_kv_pairs", "num_tokens", "cycles", "segments",
    "ms_per_sample", "layer_calls", "exponent", "fit_first_len",
    "fit_last_len", "message",
)

INT_FIELDS = (
    "batch", "seq_len", "reps", "warmup", "flops", "bytes_per_token", "bytes_moved", "peak_mem_bytes", "predicted_mem_bytes",
    "state_bytes", "params", "gen_length", "steps", "block_length", "model_calls", "num_kv_pairs", "num_tokens", "cycles",
    "segments", "layer_calls", "fit_first_len", "fit_last_len",
)


# --- formatting ---------------------------------------------------------------------------------


def fmt(x: float) -> str:
    """About three significant figures, without exponents for the ranges benchmarks produce."""
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:#.3g}"


def fmt_len(length: int | None) -> str:
    """1024 -> 1K, 1048576 -> 1M; other lengths as they are."""
    if length is None:
        return "any L"
    if length >= 1 << 20 and length % (1 << 20) == 0:
        return f"{length >> 20}M"
    if length >= 1 << 10 and length % (1 << 10) == 0:
        return f"{length >> 10}K"
    return str(length)


IMPL_MARK = "†"
IMPL_LEGEND = (f"{IMPL_MARK} {roofline.IMPLEMENTATION_LABEL}: under {roofline.IMPLEMENTATION_BOUND:.0%} of its roofline "
               "bound, so the figure measures the implementation, not the architecture.")


def timing_text(row: dict) -> str:
    """"median [ci_low, ci_high]", marked when the row is implementation-bound (rows carry their bounds)."""
    if row.get("status") != "ok":
        return status_label(row)
    median, low, high = row.get("ms_median"), row.get("ms_ci_low"), row.get("ms_ci_high")
    if median is None:
        return "n/a"
    mark = f" {IMPL_MARK}" if roofline.is_implementation_bound(row) else ""
    if low is None or high is None:
        return fmt(median) + mark
    return f"{fmt(median)} [{fmt(low)}, {fmt(high)}]{mark}"


def memory_text(row: dict) -> str:
    if row.get("status") != "ok":
        return status_label(row)
    peak = row.get("peak_mem_bytes")
    return fmt(peak / 2**20) if peak is not None else "n/a"


def value_text(row: dict) -> str:
    if row.get("status") != "ok":
        return status_label(row)
    value, stderr = row.get("value"), row.get("stderr")
    if value is None:
        return "n/a"
    return f"{fmt(value)} ± {fmt(stderr)}" if stderr is not None else fmt(value)


# --- grouping -------------------------------------------------------------------------------------


def ordered_measurements(rows: list[dict]) -> list[str]:
    """Measurements in the store: the known ones in their usual order, then any others by name."""
    present = {r.get("measurement") for r in rows if r.get("measurement")}
    known = [m for m in TIMED + CAPABILITY if m in present]
    return known + sorted(present - set(known))


def is_timed(measurement: str, rows: list[dict]) -> bool:
    if measurement in TIMED:
        return True
    if measurement in CAPABILITY:
        return False
    return not any(r.get("value") is not None for r in rows)


def series_fields(rows: list[dict]) -> list[str]:
    """The identity fields these rows carry (with seq_len, they tell cells apart)."""
    return [f for f in SERIES_FIELDS if any(r.get(f) is not None for r in rows)]


def shown_fields(rows: list[dict], fields: list[str]) -> tuple[list[str], dict]:
    """(fields that vary, shown as columns; {field: value} of those that do not, for the header).

    The architecture is always a column, so every line says whose it is.
    """
    constant = {}
    shown = []
    for f in fields:
        values = {r.get(f) for r in rows}
        if len(values) == 1 and f != "arch":
            constant[f] = values.pop()
        else:
            shown.append(f)
    return shown, constant


def series_key(row: dict, fields: list[str]) -> tuple:
    return tuple(row.get(f) for f in fields)


def sort_key(key: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in key)


def series_fits(rows: list[dict], fields: list[str]) -> dict[tuple, Fit | None]:
    """Scaling fit of each series over its ok cells."""
    points: dict[tuple, tuple[list, list]] = {}
    for r in rows:
        lens, ms = points.setdefault(series_key(r, fields), ([], []))
        if r.get("status") == "ok" and r.get("ms_median") is not None and r.get("seq_len") is not None:
            lens.append(r["seq_len"])
            ms.append(r["ms_median"])
    return {key: fit_scaling(lens, ms) for key, (lens, ms) in points.items()}


def fit_text(fit: Fit | None) -> str:
    if fit is None:
        return "n/a"
    exponent = round(fit.exponent, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{exponent:.2f} ({fmt_len(fit.first_len)}–{fmt_len(fit.last_len)})"


def with_bounds(rows: list[dict], env: dict) -> list[dict]:
    """Rows with their roofline bounds, computed from env.json's ceilings where a row lacks them."""
    ceilings = roofline.run_ceilings(env)
    return [roofline.with_bounds(r, ceilings) for r in rows]


def ceiling_fractions(row: dict, env: dict) -> dict:
    """Achieved TFLOP/s over the bf16 matmul ceiling, achieved GB/s over the copy ceiling."""
    ceilings = env.get("ceilings") or {}
    out = {}
    if row.get("tflops") is not None and ceilings.get("matmul_bf16_tflops"):
        out["matmul_ceiling_fraction"] = row["tflops"] / ceilings["matmul_bf16_tflops"]
    if row.get("bandwidth_gbs") is not None and ceilings.get("copy_gbs"):
        out["copy_ceiling_fraction"] = row["bandwidth_gbs"] / ceilings["copy_gbs"]
    return out


# --- tables ---------------------------------------------------------------------------------------


def wide_table(
    rows: list[dict], fields: list[str], shown: list[str], text, last: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """One line per series, one column per length, each cell `text(row)`; `last` adds
    {column: {series key: text}} columns at the right."""
    lengths = sorted({r.get("seq_len") for r in rows}, key=lambda n: (n is not None, n or 0))
    grid: dict[tuple, dict] = {}
    for r in rows:
        grid.setdefault(series_key(r, fields), {})[r.get("seq_len")] = text(r)
    records = []
    for key in sorted(grid, key=sort_key):
        record = {f: (NOT_MEASURED if v is None else str(v)) for f, v in zip(fields, key) if f in shown}
        record.update({fmt_len(n): grid[key].get(n, NOT_MEASURED) for n in lengths})
        for column, by_key in (last or {}).items():
            record[column] = by_key.get(key, "n/a")
        records.append(record)
    return pd.DataFrame.from_records(records)


def probe_cells(rows: list[dict]) -> pd.DataFrame:
    """The probe rows as one line per (task, axis point, series), in display order.

    Columns: task, point (the axis values that vary within the task, e.g. "L=64, kv=4"; all of
    them when the task has one point; a point scored at a length it was not trained at adds
    "(trained at L=256)"), series (arch, plus any identity field that varies, as an
    ordered Categorical so colours match across tasks), value, stderr, chance, status ("diverged"
    for a cell whose training loss turned NaN), text (the table's cell text) and curve. A failed
    cell has no axis values (`run_cell` adds them only on success), so it appears at every point
    of its task, or at ALL_POINTS when none ran there.
    """
    rows = [r for r in rows if r.get("measurement") == "probe"]
    fields = [f for f in series_fields(rows) if f not in ("task", "metric")]
    shown, _ = shown_fields(rows, fields)
    keys = sorted({series_key(r, fields) for r in rows}, key=sort_key)
    names = {key: " ".join(str(v) for f, v in zip(fields, key) if f in shown and v is not None) for key in keys}
    present = {r.get("task") for r in rows}
    tasks = [t for t in PROBE_TASKS if t in present] + sorted(present - set(PROBE_TASKS), key=str)
    records = []
    for task in tasks:
        subset = [r for r in rows if r.get("task") == task]
        ok = [r for r in subset if r.get("status") == "ok"]
        axes = [a for a in PROBE_AXES if any(r.get(a) is not None for r in ok)]
        varying = [a for a in axes if len({r.get(a) for r in ok}) > 1] or axes
        metrics = len({r.get("metric") for r in ok}) > 1  # e.g. sudoku's accuracy per cell and per puzzle

        def point_key(r: dict) -> tuple:  # the varying axes, the metric, then the trained length of an untrained point
            untrained = r.get("train_seq_len") not in (None, r.get("seq_len"))
            return (*(r.get(a) for a in varying), r.get("metric") if metrics else None,
                    r["train_seq_len"] if untrained else None)

        labels = {}
        for r in ok:
            key = point_key(r)
            labels[key] = ", ".join(f"{PROBE_AXES[a]}={r.get(a)}" for a in varying)
            labels[key] += f" · {key[-2]}" if key[-2] else ""
            labels[key] += f" (trained at L={key[-1]})" if key[-1] else ""
        points = [labels[k] for k in sorted(labels, key=sort_key)] or [ALL_POINTS]
        chance = next((r["chance"] for r in ok if r.get("chance") is not None), None)
        cells = []
        for r in subset:
            key = series_key(r, fields)
            cell = {"task": task, "series": names[key], "value": r.get("value"), "stderr": r.get("stderr"),
                    "chance": r.get("chance", chance), "status": r.get("status"), "text": value_text(r),
                    "curve": r.get("curve"), "order": keys.index(key)}
            if r.get("status") == "ok" and (step := store.diverged_at(r)):
                cell.update(status="diverged", text=f"diverged (step {step})")
            if r.get("status") == "ok":
                cells.append({**cell, "point": labels[point_key(r)]})
            else:
                cells += [{**cell, "point": point} for point in points]
        records += sorted(cells, key=lambda c: (points.index(c["point"]), c["order"]))
    columns = ["task", "point", "series", "value", "stderr", "chance", "status", "text", "curve"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame["series"] = pd.Categorical(frame["series"], categories=list(dict.fromkeys(names.values())), ordered=True)
    return frame


def probe_table(rows: list[dict]) -> pd.DataFrame:
    """One line per (task, axis point) with its chance accuracy, one column per series."""
    cells = probe_cells(rows)
    lines: dict[tuple, dict] = {}
    for c in cells.to_dict("records"):
        line = lines.setdefault((c["task"], c["point"]), {"task": c["task"], "point": c["point"], "chance": "n/a"})
        if c["chance"] is not None and not pd.isna(c["chance"]):
            line["chance"] = fmt(c["chance"])
        line[c["series"]] = c["text"]
    columns = ["task", "point", "chance", *cells["series"].cat.categories]
    return pd.DataFrame.from_records(list(lines.values()), columns=columns).fillna(NOT_MEASURED)


def _range(values) -> str:
    values = sorted({v for v in values if v is not None})
    if not values:
        return "?"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def header(measurement: str, rows: list[dict], constant: dict, timed: bool) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    unit = UNITS.get(measurement, "ms per call at length L") if timed else "metric value ± standard error"
    if timed:
        unit += "; median [95% interval of the median] over each cell's timed repetitions"
    setting = " · ".join(f"{f} {v}" for f, v in constant.items() if v is not None)
    if timed and ok:
        reps, warmup = _range(r.get("reps") for r in ok), _range(r.get("warmup") for r in ok)
        setting += f" · {reps} timed repetitions per cell, {warmup} warm-up"
    elif timed:
        setting += " · no cell ran"
    lines = [f"## {measurement}", "", f"Unit: {unit}.", "", f"Setting: {setting.strip(' ·')}.", ""]
    columns = "Columns are sequence lengths L"
    if measurement == "probe":
        axes = ", ".join(f"{short} = {axis}" for axis, short in PROBE_AXES.items())
        columns = (f"Lines are a task's evaluated points ({axes}) with chance accuracy (1 / possible answers); "
                   "columns are models")
    lines.append(f"{columns}; a cell that did not run shows its status (details below the table); "
                 f"{NOT_MEASURED} = no row in the store (not in the suite, or not reached by an interrupted run: `altbench run --resume` finishes it).")
    if timed:
        lines.append("Exponent: log-log slope of ms vs L over the compute-bound lengths in brackets (from the first length "
                     f"costing at least {GROWTH:g}x the cheapest; see altbench/report/scaling.py).")
    return lines + [""]


def failures(rows: list[dict]) -> list[str]:
    bad = [r for r in rows if r.get("status") != "ok"]
    if not bad:
        return []
    lines = ["", "Cells that did not run:", ""]
    for r in sorted(bad, key=lambda r: str(r.get("cell_id"))):
        message = (r.get("message") or "").splitlines()[0][:200] if r.get("message") else "no message"
        lines.append(f"- `{r.get('cell_id')}`: {status_label(r)} — {message}")
    return lines


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)  # keep "0.50" as written


def memory_section(measurement: str, rows: list[dict], fields: list[str], shown: list[str]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not any(r.get("peak_mem_bytes") is not None for r in ok):
        return []
    sources = ", ".join(sorted({r["mem_source"] for r in ok if r.get("mem_source")})) or "source not recorded"
    return ["", f"### {measurement}: peak memory, MiB ({sources})", "",
            _markdown(wide_table(rows, fields, shown, memory_text))]


def bound_section(measurement: str, rows: list[dict], fields: list[str], shown: list[str], env: dict) -> list[str]:
    """Each cell's fraction of its roofline bound (measure/roofline.py; 1.0 is the device's limit)."""
    if not any(r.get("roofline_frac") is not None for r in rows):
        return []

    def fraction(r: dict) -> str:
        if r.get("status") != "ok":
            return status_label(r)
        frac = r.get("roofline_frac")
        if frac is None:
            return "n/a"
        return f"{frac:.2f} {roofline.IMPLEMENTATION_LABEL}" if roofline.is_implementation_bound(r) else f"{frac:.2f}"

    c = roofline.run_ceilings(env) or {}
    return ["", f"### {measurement}: fraction of the roofline bound (max(FLOPs / {c.get('matmul_bf16_tflops', 0):,.0f} "
            f"TFLOP/s, bytes moved / {c.get('copy_gbs', 0):,.0f} GB/s) / measured time; 1.0 is the device's limit, "
            f"under {roofline.IMPLEMENTATION_BOUND:.2f} {roofline.IMPLEMENTATION_LABEL})", "",
            _markdown(wide_table(rows, fields, shown, fraction))]


def batch_section(rows: list[dict]) -> list[str]:
    """Decode throughput against batch (when the rows vary in batch): tokens/s per model and context
    with its fraction of the roofline bound, and the state (recurrent state or KV cache) it reads."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("tokens_per_s")]
    batches = sorted({r["batch"] for r in rows if r.get("batch")})
    if len(batches) < 2 or not ok:
        return []
    keys = ("arch", "size", "backend", "seq_len")
    lines: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r.get(k) for k in keys)
        line = lines.setdefault(key, {"model": f"{r.get('arch')} {r.get('size')} ({r.get('backend')})",
                                      "context": fmt_len(r.get("seq_len"))})
        if r.get("status") != "ok":
            line[f"b{r['batch']}"] = status_label(r)
            continue
        frac = f", {r['roofline_frac']:.2f} of bound" if r.get("roofline_frac") is not None else ""
        state = f", state {r['state_bytes'] / 2**30:.2f} GiB" if r.get("state_bytes") is not None else ""
        line[f"b{r['batch']}"] = f"{r['tokens_per_s']:,.0f}{frac}{state}"
    table = pd.DataFrame.from_records([lines[k] for k in sorted(lines, key=sort_key)],
                                      columns=["model", "context", *(f"b{b}" for b in batches)]).fillna(NOT_MEASURED)
    return ["", "### decode: throughput against batch (tokens/s; fraction of the roofline bound; state read per step)",
            "", _markdown(table)]


def generate_steps(row: dict) -> int | None:
    """A generate row's denoising steps N (from its cell's task, "steps64", when it did not run), or
    None for an autoregressive model."""
    if row.get("steps") is not None:
        return row["steps"]
    task = str(row.get("task") or "")
    return int(task.removeprefix("steps")) if task.startswith("steps") and task[5:].isdigit() else None


def generate_matched(rows: list[dict]) -> list[dict]:
    """Generate rows with an autoregressive model's row repeated at every N present (as its task), so
    that it meets each masked diffusion row of the same setting."""
    steps = sorted({n for r in rows if (n := generate_steps(r)) is not None})
    out = []
    for r in rows:
        out += [{**r, "task": f"steps{n}"} for n in steps] if steps and generate_steps(r) is None else [r]
    return out


def generate_lines(rows: list[dict]) -> tuple[list[int], dict[tuple, dict]]:
    """(every N in the rows, {(model, L): {N or None: row}}): a masked diffusion model's rows by N, an
    autoregressive model's one row under None; `model` names arch and size, plus backend, dtype and
    batch where they vary."""
    fields = [f for f in ("arch", "size", "backend", "dtype", "batch") if any(r.get(f) is not None for r in rows)]
    shown, _ = shown_fields(rows, fields)
    shown = [f for f in fields if f in shown or f in ("arch", "size")]
    lines: dict[tuple, dict] = {}
    for r in rows:
        model = " ".join(f"b{r[f]}" if f == "batch" else str(r[f]) for f in shown if r.get(f) is not None)
        lines.setdefault((model, r.get("seq_len")), {})[generate_steps(r)] = r
    steps = sorted({n for by_n in lines.values() for n in by_n if n is not None})
    return steps, dict(sorted(lines.items(), key=lambda kv: sort_key(kv[0])))


def generate_section(rows: list[dict]) -> list[str]:
    """Time and tokens/s to generate G tokens against the denoising steps N, one line per model and
    prompt length; an autoregressive model's figure stands in every column (it makes G calls whatever N)."""
    steps, lines = generate_lines(rows)

    def text(r: dict) -> str:
        if r.get("status") != "ok":
            return status_label(r)
        return f"{timing_text(r)} ms, {r['tokens_per_s']:,.0f} tok/s" if r.get("tokens_per_s") else timing_text(r)

    columns = [f"N={n}" for n in steps] or ["G calls"]
    records = []
    for (model, length), by_n in lines.items():
        ar = by_n.get(None)
        record = {"model": model + (" (autoregressive: G calls at every N)" if ar else ""), "L": fmt_len(length)}
        for n, column in zip(steps or [None], columns):
            row = ar if ar is not None else by_n.get(n)
            record[column] = text(row) if row is not None else NOT_MEASURED
        records.append(record)
    gens = _range(r.get("gen_length") for r in rows)
    blocks = _range(r.get("block_length") for r in rows)
    return ["", f"### generate: time and tokens/s to produce G = {gens} tokens after a prompt of L tokens, against "
            f"denoising steps N (block length {blocks})", "", _markdown(pd.DataFrame.from_records(records))]


def csv_frame(measurement: str, rows: list[dict], fields: list[str], fits: dict, env: dict) -> pd.DataFrame:
    """One line per cell with the raw figures, the derived fractions and the series' exponent."""
    records = []
    for r in rows:
        record = {f: r.get(f) for f in CSV_FIELDS}
        if r.get("roofline_frac") is not None:
            record["implementation_bound"] = roofline.is_implementation_bound(r)
        record.update(ceiling_fractions(r, env))
        fit = fits.get(series_key(r, fields))
        if fit is not None:
            record.update(exponent=fit.exponent, fit_first_len=fit.first_len, fit_last_len=fit.last_len)
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(CSV_FIELDS)).dropna(axis=1, how="all")
    for column in frame.columns.intersection(INT_FIELDS):
        values = frame[column].dropna()
        if all(isinstance(v, (int, float)) and float(v).is_integer() for v in values):
            frame[column] = frame[column].astype("Int64")  # a failed cell's blank must not turn 5 into 5.0
    return frame


def measurement_markdown(measurement: str, rows: list[dict], env: dict) -> tuple[str, pd.DataFrame]:
    """The Markdown section of one measurement and its CSV frame."""
    rows = with_bounds(rows, env)
    fields = series_fields(rows)
    shown, constant = shown_fields(rows, fields)
    timed = is_timed(measurement, rows)
    lines = header(measurement, rows, constant, timed)
    fits = series_fits(rows, fields) if timed else {}
    if timed:
        exponents = {key: fit_text(fit) for key, fit in fits.items()}
        lines.append(_markdown(wide_table(rows, fields, shown, timing_text, {"exponent (fit range)": exponents})))
        if any(roofline.is_implementation_bound(r) for r in rows):
            lines += ["", IMPL_LEGEND]
        lines += memory_section(measurement, rows, fields, shown)
        lines += bound_section(measurement, rows, fields, shown, env)
        if measurement == "decode":
            lines += batch_section(rows)
        if measurement == "generate":
            lines += generate_section(rows)
    elif measurement == "probe":
        lines.append(_markdown(probe_table(rows)))
    else:
        lines.append(_markdown(wide_table(rows, fields, shown, value_text)))
    lines += failures(rows)
    return "\n".join(lines) + "\n", csv_frame(measurement, rows, fields, fits, env)


def write_tables(rows: list[dict], env: dict, out_dir: Path) -> list[Path]:
    """<out_dir>/<measurement>.md and .csv for every measurement in the rows, each written atomically."""
    rundir.output_dir(out_dir)
    written = []
    for measurement in ordered_measurements(rows):
        subset = [r for r in rows if r.get("measurement") == measurement]
        markdown, frame = measurement_markdown(measurement, subset, env)
        md, csv = out_dir / f"{measurement}.md", out_dir / f"{measurement}.csv"
        rundir.write_text(md, markdown)
        with rundir.atomic(csv) as tmp:
            frame.to_csv(tmp, index=False)
        written += [md, csv]
    return written
