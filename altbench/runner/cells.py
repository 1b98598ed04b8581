"""A cell is one measurement of one configuration; a suite expands into the product of its axes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from altbench.errors import UserError
from altbench.runner.suite import Settings, Suite

CAPABILITY = ("probe", "lm_eval")  # trained / evaluated, not timed: seq_len comes from their own axes
LENGTH_BOUND = ("prefill", "train_step", "kernel", "reasoning")  # measurements whose work grows at least linearly in L
NOT_APPLICABLE = "not applicable"  # a skipped row's message starts so when the model cannot do the measurement
PREDICT_FROM_S = 1.0  # shorter calls are too close to fixed launch costs to extrapolate from


def series_of(cell_id: str) -> str:
    """A cell id without its length: the cells one curve of a scaling plot is made of."""
    return cell_id.rsplit("/L", 1)[0]


@dataclass(frozen=True)
class Cell:
    arch: str
    size: str
    backend: str
    measurement: str
    dtype: str
    device: str
    batch: int
    seq_len: int  # 0 for capability cells, whose rows carry their own lengths
    settings: Settings
    task: str = ""  # probe task, comma-joined lm-eval tasks, a generate cell's denoising steps ("steps64"),
    # or a reasoning cell's "c<cycles>-s<segments>" / "forward"
    weights: str = ""  # a local Hugging Face checkpoint directory; "" = random weights
    extra: dict = field(default_factory=dict, hash=False)  # measurement-specific options from the suite

    @property
    def cell_id(self) -> str:
        """Stable identity across resumes: every axis value, none of the settings."""
        task = f"/{self.task}" if self.task else ""
        return f"{self.measurement}{task}/{self.arch}/{self.size}/{self.backend}/{self.dtype}/{self.device}/b{self.batch}/L{self.seq_len}"

    @property
    def series_id(self) -> str:
        return series_of(self.cell_id)

    def identity(self) -> dict:
        """The row fields that say which cell a result belongs to."""
        fields = ("arch", "size", "backend", "measurement", "dtype", "device", "batch", "seq_len")
        row = {"cell_id": self.cell_id, **{k: getattr(self, k) for k in fields}}
        row.update({k: getattr(self, k) for k in ("task", "weights") if getattr(self, k)})
        return row

    def skip_reason(self) -> str | None:
        """Why the suite itself excludes this cell (recorded as a `skipped` row), or None."""
        s = self.settings
        if s.max_seq_len and self.seq_len > s.max_seq_len:
            return f"suite limits {self.measurement} to seq_len <= {s.max_seq_len}"
        if s.max_batch and self.batch > s.max_batch:
            return f"suite limits {self.measurement} to batch <= {s.max_batch}"
        return None


def beyond_timeout(cell: Cell, shorter: dict | None) -> str | None:
    """Why `cell` cannot finish within its timeout, judged from `shorter`, the row of the same
    series at the next shorter length, or None. A timeout there means a timeout here; otherwise the
    time per call is extrapolated linearly in L (a lower bound for work that grows at least
    linearly) and the cell needs at least 1 + MIN_REPS calls (the first, then the fewest samples)."""
    from altbench.measure.timing import MIN_REPS

    if shorter is None or cell.measurement not in LENGTH_BOUND:
        return None
    timeout = cell.settings.timeout_s
    if shorter["status"] == "timeout":
        return f"timed out at L={shorter['seq_len']}, so L={cell.seq_len} cannot finish within {timeout:g} s"
    median_s = (shorter.get("ms_median") or 0) / 1e3
    if shorter["status"] != "ok" or median_s < PREDICT_FROM_S:
        return None
    call_s = median_s * cell.seq_len / shorter["seq_len"]
    need_s = call_s * (1 + MIN_REPS)
    if need_s <= timeout:
        return None
    return (f"needs >= {need_s:.0f} s ({1 + MIN_REPS} calls of >= {call_s:.1f} s, linear from {median_s:.1f} s "
            f"at L={shorter['seq_len']}), over the {timeout:g} s cell timeout")


def _tasks(suite: Suite, measurement: str, extra: dict) -> list[str]:
    tasks = extra.get("tasks")
    if not tasks or not isinstance(tasks, list):
        raise UserError(f"{suite.path} [measurements.{measurement}]: key 'tasks' (a list of task names) is required")
    return tasks


def _generate_cells(common: dict, suite: Suite, settings: Settings, options: dict) -> list[Cell]:
    """A masked diffusion model gets one cell per denoising step count N; an autoregressive model one
    cell (it produces G tokens in G calls whatever N is), so each of its rows stands beside every N."""
    from altbench import registry
    from altbench.models.base import MASKED_DIFFUSION

    diffusion = MASKED_DIFFUSION in registry.family(common["arch"]).MODEL.capabilities
    steps = options["steps"] if diffusion else [None]
    shared = {k: v for k, v in options.items() if k != "steps"}
    return [Cell(**common, batch=batch, seq_len=seq_len, settings=settings, task=f"steps{n}" if n else "",
                 extra={**shared, "steps": n} if n else shared)
            for batch, seq_len in itertools.product(suite.batches, sorted(suite.seq_lens)) for n in steps]


REASONING_FORWARD = "forward"  # the one reasoning cell of a model that is not iterative: a forward pass


def reasoning_points(arch: str, size: str, axes: dict) -> list[tuple[str, dict]]:
    """(task label, extra) of each reasoning cell: an iterative model (HRM) at every (cycles,
    segments) of the suite's axes (defaults: the size's h_cycles and max_segments); any other
    model once, as one forward pass."""
    from altbench import registry
    from altbench.models.base import ITERATIVE

    if ITERATIVE not in registry.family(arch).MODEL.capabilities:
        return [(REASONING_FORWARD, {})]
    config = registry.config(arch, size)
    cycles, segments = axes.get("cycles", [config.h_cycles]), axes.get("segments", [config.max_segments])
    return [(f"c{c}-s{m}", {"cycles": c, "segments": m}) for c, m in itertools.product(cycles, segments)]


def expand(suite: Suite, device: str, weights: str = "") -> list[Cell]:
    """Every cell of the suite, shortest lengths first (every measurement and architecture at one
    length before the next), so an interrupted sweep still compares everything up to some length."""
    cells = []
    for measurement, settings in suite.measurements.items():
        extra = dict(suite.extra.get(measurement, {}))
        for arch in suite.archs_of(measurement):
            for size, backend, dtype in itertools.product(suite.sizes_of(arch), suite.backends_of(arch, measurement), suite.dtypes):
                common = dict(arch=arch, size=size, backend=backend, measurement=measurement, dtype=dtype, device=device,
                              weights=weights)
                if measurement == "probe":  # options for every task, then [measurements.probe.<task>]
                    shared = {k: v for k, v in extra.items() if k != "tasks" and not isinstance(v, dict)}
                    for task in _tasks(suite, measurement, extra):
                        options = {**shared, **extra.get(task, {})}
                        cells.append(Cell(**common, batch=1, seq_len=0, settings=settings, task=task, extra=options))
                elif measurement == "reasoning":
                    for (task, options), batch, seq_len in itertools.product(
                            reasoning_points(arch, size, extra), suite.batches, sorted(suite.seq_lens)):
                        cells.append(Cell(**common, batch=batch, seq_len=seq_len, settings=settings, task=task, extra=options))
                elif measurement == "lm_eval":
                    tasks = _tasks(suite, measurement, extra)
                    options = {k: v for k, v in extra.items() if k != "tasks"}
                    cells.append(Cell(**common, batch=1, seq_len=0, settings=settings, task=",".join(tasks), extra=options))
                elif measurement == "generate":
                    cells += _generate_cells(common, suite, settings, extra)
                else:
                    for batch, seq_len in itertools.product(suite.batches, sorted(suite.seq_lens)):
                        cells.append(Cell(**common, batch=batch, seq_len=seq_len, settings=settings))
    return sorted(cells, key=lambda c: c.seq_len)  # stable: suite order within a length
