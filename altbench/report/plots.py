"""Plots of one run, as PNG and SVG in `<run>/plots/`.

    <measurement>_ms   cost vs L on log-log axes, one line per series with its 95% interval as
                       error bars and the fitted exponent in the legend (decode: latency per step vs
                       context, beside its bandwidth bound when env.json has ceilings)
    memory             peak memory vs L, one panel per timed measurement
    ceilings           achieved TFLOP/s / bf16 matmul ceiling and GB/s / copy ceiling vs L
                       (only when env.json has ceilings)
    generate_steps     time to generate G tokens against denoising steps N, one panel per prompt
                       length L; autoregressive models (G calls whatever N) as horizontal lines
    probe_accuracy     probe accuracy per task: a group of bars per axis point, one bar per model,
                       stderr as error bars, chance dashed; a cell that did not run is a hatched bar
                       with its status written at the foot
    probe_curves       probe training loss vs step, one panel per task, one line per model

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so
rendering touches no global state and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from altbench.measure import roofline
from altbench.report import status_label
from altbench.runner import rundir
from altbench.report.tables import (
    UNITS, ceiling_fractions, fmt_len, generate_lines, is_timed, ordered_measurements, probe_cells, series_fields,
    series_fits, series_key, shown_fields, sort_key,
)


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """<out_dir>/<stem>.png and .svg, each written atomically."""
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    with rundir.atomic(png) as tmp:
        fig.savefig(tmp, dpi=100)
    with rundir.atomic(svg) as tmp, rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable
        fig.savefig(tmp, metadata={"Date": None})
    return [png, svg]


def label(key: tuple, fields: list[str], shown: list[str]) -> str:
    parts = []
    for f, v in zip(fields, key):
        if f in shown and v is not None:
            parts.append(f"b{v}" if f == "batch" else str(v))
    return " ".join(parts)


BACKEND_STYLES = {"torch": ("-", "o"), "triton": ("--", "s"), "fla": (":", "^"), "mamba_ssm": ("-.", "D")}


def series_styles(keys: list[tuple], fields: list[str]) -> dict[tuple, dict]:
    """Colour by architecture, line and marker by backend: an architecture's backends share a hue."""
    values = [dict(zip(fields, key)) for key in keys]
    archs = list(dict.fromkeys(v.get("arch") for v in values))
    return {
        key: {"color": f"C{archs.index(v.get('arch')) % 10}",
              **dict(zip(("linestyle", "marker"), BACKEND_STYLES.get(v.get("backend"), ("-", "o"))))}
        for key, v in zip(keys, values)
    }


def _series(rows: list[dict], fields: list[str]) -> dict[tuple, list[dict]]:
    """ok rows with a length and a time, per series, sorted by length."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("seq_len") is not None and r.get("ms_median") is not None:
            out.setdefault(series_key(r, fields), []).append(r)
    return {k: sorted(v, key=lambda r: r["seq_len"]) for k, v in sorted(out.items(), key=lambda kv: sort_key(kv[0]))}


def length_axis(ax) -> None:
    """Log-2 x axis labelled 1K, 4K, 1M (plain text: no mathtext to typeset)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_len(int(round(x)))))
    ax.xaxis.set_minor_locator(NullLocator())


def log_axes(ax, xlabel: str, ylabel: str) -> None:
    length_axis(ax)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def cost_plot(measurement: str, rows: list[dict], env: dict, out_dir: Path) -> list[Path]:
    fields = series_fields(rows)
    shown, _ = shown_fields(rows, fields)
    series = _series(rows, fields)
    if not series:
        return []
    fits = series_fits(rows, fields)
    styles = series_styles(list(series), fields)
    ceilings = roofline.run_ceilings(env)
    fig = Figure(layout="constrained", figsize=(7, 4.5))
    ax = fig.subplots()
    for key, points in series.items():
        lengths = [r["seq_len"] for r in points]
        ms = [r["ms_median"] for r in points]
        low = [m - (r.get("ms_ci_low") if r.get("ms_ci_low") is not None else m) for m, r in zip(ms, points)]
        high = [(r.get("ms_ci_high") if r.get("ms_ci_high") is not None else m) - m for m, r in zip(ms, points)]
        fit = fits.get(key)
        exponent = f" (exponent {fit.exponent:.2f})" if fit is not None else ""
        ax.errorbar(lengths, ms, yerr=[low, high], capsize=3, label=label(key, fields, shown) + exponent, **styles[key])
        bounds = [roofline.with_bounds(r, ceilings).get("bound_ms") for r in points]
        if all(b is not None for b in bounds):
            ax.plot(lengths, bounds, linestyle=(0, (1, 3)), color=styles[key]["color"], alpha=0.6,
                    label=f"{label(key, fields, shown)} roofline bound")
    xlabel = "context length (tokens)" if measurement == "decode" else "sequence length L (tokens)"
    log_axes(ax, xlabel, "ms (median, 95% interval)")
    ax.set_title(f"{measurement}: {UNITS.get(measurement, 'ms per call')}", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, out_dir, f"{measurement}_ms")


def memory_plot(rows: list[dict], out_dir: Path) -> list[Path]:
    panels = []
    for measurement in ordered_measurements(rows):
        subset = [r for r in rows if r.get("measurement") == measurement]
        if is_timed(measurement, subset) and any(r.get("status") == "ok" and r.get("peak_mem_bytes") for r in subset):
            panels.append((measurement, subset))
    if not panels:
        return []
    fig = Figure(layout="constrained", figsize=(5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (measurement, subset) in zip(axes, panels):
        fields = series_fields(subset)
        shown, _ = shown_fields(subset, fields)
        series = _series(subset, fields)
        styles = series_styles(list(series), fields)
        for key, points in series.items():
            points = [r for r in points if r.get("peak_mem_bytes")]
            if points:
                ax.plot([r["seq_len"] for r in points], [r["peak_mem_bytes"] / 2**20 for r in points],
                        label=label(key, fields, shown), **styles[key])
        log_axes(ax, "sequence length L (tokens)", "peak memory (MiB)")
        ax.set_title(measurement)
        ax.legend(fontsize=7)
    return save(fig, out_dir, "memory")


def ceilings_plot(rows: list[dict], env: dict, out_dir: Path) -> list[Path]:
    """One panel per (timed measurement, ceiling) with data, in two columns; one legend beside them."""
    if not env.get("ceilings"):
        return []
    kinds = (("matmul_ceiling_fraction", "achieved TFLOP/s / bf16 matmul ceiling"),
             ("copy_ceiling_fraction", "achieved GB/s / copy ceiling"))
    panels = {}  # (measurement, kind) -> {series label: [(L, fraction)]}
    styles, names = {}, {}
    for measurement in ordered_measurements(rows):
        subset = [r for r in rows if r.get("measurement") == measurement]
        fields = series_fields(subset)
        shown, _ = shown_fields(subset, fields)
        series = _series(subset, fields)
        for key, style in series_styles(list(series), fields).items():
            name = label(key, fields, shown)
            styles.setdefault(name, style)
            for kind, _ in kinds:
                xy = [(r["seq_len"], ceiling_fractions(r, env).get(kind)) for r in series[key]]
                xy = [(x, y) for x, y in xy if y is not None]
                if xy:
                    panels.setdefault((measurement, kind), {})[name] = xy
                    names[name] = None
    if not panels:
        return []
    titles = dict(kinds)
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(layout="constrained", figsize=(5.5 * ncols + 1.5, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, ((measurement, kind), curves) in zip(axes, panels.items()):
        for name, xy in curves.items():
            ax.plot([x for x, _ in xy], [y for _, y in xy], **styles[name])
        length_axis(ax)
        top = max(y for xy in curves.values() for _, y in xy)
        ax.set_ylim(0, max(1.0, top * 1.05))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("sequence length L (tokens)")
        ax.set_ylabel("fraction of ceiling")
        ax.set_title(f"{measurement}: {titles[kind]}", fontsize=9)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], label=name, **styles[name]) for name in names]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    return save(fig, out_dir, "ceilings")


def decode_batch_plot(rows: list[dict], env: dict, out_dir: Path) -> list[Path]:
    """Decode tokens/s against batch, one line per model and context, each beside its roofline bound
    (batch / bound time: what the device could do for that model); only when decode varies in batch."""
    ok = [roofline.with_bounds(r, roofline.run_ceilings(env)) for r in rows
          if r.get("measurement") == "decode" and r.get("status") == "ok" and r.get("tokens_per_s")]
    if len({r["batch"] for r in ok}) < 2:
        return []
    series: dict[tuple, list[dict]] = {}
    for r in sorted(ok, key=lambda r: r["batch"]):
        series.setdefault((r.get("arch"), r.get("size"), r.get("backend"), r.get("seq_len")), []).append(r)
    fig = Figure(layout="constrained", figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (key, points) in enumerate(sorted(series.items(), key=lambda kv: sort_key(kv[0]))):
        arch, size, backend, context = key
        batches = [r["batch"] for r in points]
        color = f"C{i % 10}"
        ax.plot(batches, [r["tokens_per_s"] for r in points], marker="o", color=color,
                label=f"{arch} {size} ({backend}), context {fmt_len(context)}")
        bound = [r["batch"] / r["bound_ms"] * 1e3 if r.get("bound_ms") else None for r in points]
        if all(b is not None for b in bound):
            ax.plot(batches, bound, linestyle=(0, (1, 3)), color=color, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
    ax.set_xlabel("batch (sequences decoded together)")
    ax.set_ylabel("tokens/s (median); dotted: roofline bound")
    ax.set_title("decode throughput against batch", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, out_dir, "decode_throughput")


def probe_plot(rows: list[dict], out_dir: Path) -> list[Path]:
    cells = probe_cells(rows)
    if cells.empty:
        return []
    series = list(cells["series"].cat.categories)
    colors = {name: f"C{i % 10}" for i, name in enumerate(series)}
    tasks = list(dict.fromkeys(cells["task"]))
    points = {task: list(dict.fromkeys(cells.loc[cells["task"] == task, "point"])) for task in tasks}
    ratios = [len(points[task]) * len(series) + 1 for task in tasks]
    fig = Figure(layout="constrained", figsize=(min(30, 2 + 0.45 * sum(ratios)), 4.5))
    axes = fig.subplots(1, len(tasks), squeeze=False, width_ratios=ratios)[0]
    width = 0.8 / len(series)
    for ax, task in zip(axes, tasks):
        for c in cells[cells["task"] == task].itertuples():
            x = points[task].index(c.point) - 0.4 + width * (series.index(c.series) + 0.5)
            if c.status == "ok" and not pd.isna(c.value):
                stderr = None if pd.isna(c.stderr) else c.stderr
                ax.bar(x, c.value, width, yerr=stderr, capsize=2, color=colors[c.series])
            else:
                ax.bar(x, 1.0, width, fill=False, hatch="//", edgecolor=colors[c.series], linewidth=0.5, alpha=0.5)
                ax.text(x, 0.02, status_label({"status": c.status}) if c.status != "ok" else "n/a", rotation=90,
                        ha="center", va="bottom", fontsize=8, fontweight="bold")
        for chance in sorted(set(cells.loc[cells["task"] == task, "chance"].dropna())):
            ax.axhline(chance, linestyle="--", color="black", linewidth=0.8)
        ax.set_xticks(range(len(points[task])), points[task], fontsize=7)
        ax.set_xlim(-0.5, len(points[task]) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_title(task)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (± stderr)")
    handles = [Patch(color=colors[name], label=name) for name in series]
    handles.append(Line2D([], [], linestyle="--", color="black", linewidth=0.8, label="chance"))
    if (cells["status"] != "ok").any():
        handles.append(Patch(fill=False, hatch="//", edgecolor="black", linewidth=0.5, label="did not run or diverged"))
    axes[0].legend(handles=handles, fontsize=7)
    return save(fig, out_dir, "probe_accuracy")


def probe_curves_plot(rows: list[dict], out_dir: Path) -> list[Path]:
    cells = probe_cells(rows)
    cells = cells[cells["curve"].map(lambda c: isinstance(c, list) and len(c) > 0)]
    cells = cells.drop_duplicates(["task", "series"])  # a cell trains once: its points share one curve
    if cells.empty:
        return []
    series = list(cells["series"].cat.categories)
    tasks = list(dict.fromkeys(cells["task"]))
    fig = Figure(layout="constrained", figsize=(4 * len(tasks), 3.5))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for c in cells[cells["task"] == task].itertuples():
            steps, losses = zip(*c.curve)
            ax.plot(steps, losses, color=f"C{series.index(c.series) % 10}")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training step")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("training loss (scored positions)")
    names = [name for name in series if name in set(cells["series"])]
    axes[0].legend(handles=[Line2D([], [], color=f"C{series.index(n) % 10}", label=n) for n in names], fontsize=7)
    return save(fig, out_dir, "probe_curves")


def generate_steps_plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """ms to generate G tokens vs denoising steps N (log-log), one panel per prompt length; an
    autoregressive model's time is a horizontal line, the same at every N."""
    ok = [r for r in rows if r.get("measurement") == "generate" and r.get("status") == "ok" and r.get("ms_median")]
    steps, lines = generate_lines(ok)
    if not steps:
        return []
    lengths = sorted({length for _, length in lines})
    models = list(dict.fromkeys(model for model, _ in lines))
    fig = Figure(layout="constrained", figsize=(5 * len(lengths), 4.2))
    axes = fig.subplots(1, len(lengths), squeeze=False)[0]
    for ax, length in zip(axes, lengths):
        for (model, at), by_n in lines.items():
            if at != length:
                continue
            color = f"C{models.index(model) % 10}"
            if None in by_n:
                ax.axhline(by_n[None]["ms_median"], color=color, linestyle="--", label=f"{model} (autoregressive)")
            else:
                ns = sorted(by_n)
                ax.plot(ns, [by_n[n]["ms_median"] for n in ns], marker="o", color=color, label=model)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("denoising steps N")
        ax.set_ylabel("ms to generate G tokens (median)")
        ax.set_title(f"prompt L = {fmt_len(length)}, G = {ok[0].get('gen_length')}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, out_dir, "generate_steps")


def write_plots(rows: list[dict], env: dict, out_dir: Path) -> list[Path]:
    """Every plot the rows support; a measurement with no ok timed cell gets none, probes get
    theirs when the rows hold any probe cell."""
    rundir.output_dir(out_dir)
    written = []
    for measurement in ordered_measurements(rows):
        subset = [r for r in rows if r.get("measurement") == measurement]
        if is_timed(measurement, subset):
            written += cost_plot(measurement, subset, env, out_dir)
    written += decode_batch_plot(rows, env, out_dir)
    written += generate_steps_plot(rows, out_dir)
    written += memory_plot(rows, out_dir)
    written += ceilings_plot(rows, env, out_dir)
    written += probe_plot(rows, out_dir)
    written += probe_curves_plot(rows, out_dir)
    return written
