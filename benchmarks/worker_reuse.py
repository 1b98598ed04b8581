"""Does a worker kept between cells change what a cell measures? An A/B of the same cells.

The runner keeps one worker process per GPU from cell to cell. Two H100 runs of the same 4K
prefill cells disagree by up to 2x (results/README.md): the earlier one gave each cell a fresh
worker, the later one a worker that had served every shorter cell first, while from 64K up the
two agree within 1%. This script measures the target cells three ways in one process tree:

    fresh         each cell in a new worker of its own
    after history in one worker that first ran every cell of the suite shorter than --length
                  (what `altbench run` does)
    fresh again   new workers once more, so drift of the device over the run shows apart

and prints the medians and the ratio after-history / fresh, and beside them the host's cost of one
eager kernel launch in each kind of worker (`launch_us` of `ceilings.measure`): if only launch-bound cells move,
that figure says whether the worker's host side got slower. Run on the GPU machine:

    python benchmarks/worker_reuse.py [--suite long-context] [--length 4096] [--measurements prefill]
                                      [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json

from altbench.measure import ceilings
from altbench.runner import suite as suites
from altbench.runner.cells import expand
from altbench.runner.worker import Worker, call_isolated, measure_cell, run_cell


def _launch(call, device: str) -> float | str:
    if not device.startswith("cuda"):
        return "n/a (GPU only)"
    row = call(ceilings.measure, (device,), 120)
    return row.get("launch_us") or row.get("message", "?")


def fresh(cells, device: str) -> tuple[list[dict], float]:
    rows = [call_isolated(measure_cell, (c,), c.settings.timeout_s) for c in cells]
    return rows, _launch(call_isolated, device)


def after_history(history, cells, device: str) -> tuple[list[dict], float]:
    with Worker() as worker:
        for cell in history:
            run_cell(cell, worker)
        rows = [worker.call(measure_cell, (c,), c.settings.timeout_s) for c in cells]
        return rows, _launch(worker.call, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="long-context")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--measurements", default="prefill", help="comma-separated measurements to compare")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    cells = expand(suites.load(args.suite), args.device)
    history = [c for c in cells if c.seq_len < args.length]
    targets = [c for c in cells if c.seq_len == args.length and c.measurement in args.measurements.split(",")]
    modes = {"fresh": lambda: fresh(targets, args.device),
             "after history": lambda: after_history(history, targets, args.device),
             "fresh again": lambda: fresh(targets, args.device)}
    runs, launches = {}, {}
    for name, measure in modes.items():  # each mode is printed and saved as it ends: a cut-off call keeps them
        runs[name], launches[name] = measure()
        medians = ", ".join(f"{r.get('ms_median') or r.get('status')}" for r in runs[name])
        print(f"{name}: launch_us {launches[name]}; ms per cell: {medians}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"history_cells": len(history), "targets": [c.cell_id for c in targets],
                           "launch_us": launches, "runs": runs}, f, indent=1)

    print(f"| cell | {' | '.join(runs)} | after history / fresh |")
    print("|---|" + "---:|" * (len(runs) + 1))
    for i, cell in enumerate(targets):
        ms = {name: r[i].get("ms_median") for name, r in runs.items()}
        ratio = ms["after history"] / ms["fresh"] if ms["fresh"] and ms["after history"] else None
        cols = [f"{v:.3g}" if v else runs[name][i].get("status", "?") for name, v in ms.items()]
        print(f"| `{cell.cell_id}` | {' | '.join(cols)} | {f'{ratio:.2f}x' if ratio else 'n/a'} |")

if __name__ == "__main__":
    main()
