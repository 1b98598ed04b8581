"""The CI gate: did a change make any cell slower than the committed baseline?

`judge(baseline, candidate)` matches the two runs' timed cells by `cell_id` (which names every
axis: measurement/arch/size/backend/dtype/device/batch/L) and gives each one verdict:

    regressed             the candidate's median is more than `threshold` slower AND the slowdown is
                          distinguishable from noise (below)
    improved              more than `threshold` faster, distinguishable the same way
    undecided             more than `threshold` apart, but the cell recorded too little to tell
                          whether that is noise (below); the note says how many reps would decide
    unchanged             none of these
    not-ok                either side did not run (OOM, error, timeout, skipped)
    missing-in-candidate  in the baseline only
    new                   in the candidate only

Distinguishable (`distinguishable`, whose rule `RULE` is what the verdict prints): a one-sided
Mann-Whitney U test (scipy.stats.mannwhitneyu) of the candidate's timed samples against the
baseline's (`ms_samples`) gives p < `alpha`. Where a cell has no samples, or too few for the test
ever to reach `alpha` (its smallest possible p-value, 1 / C(n + m, n), is not below it), the 95%
intervals of the two medians must not overlap. Where neither was recorded the cell is undecided.

The gate fails (`exit_code` 1) when a cell regressed, when a cell that ran in the baseline did
not run in the candidate (a breakage, the worst slowdown), with `fail_undecided` when a cell is
undecided about a slowdown, or when it refuses to judge: timings are only comparable on the same
GPU, driver, torch and triton, so a mismatch there, or an env.json that is missing or damaged on
either side (the environments cannot be compared), refuses unless `allow_env_mismatch`. With `eager_min_len` N, eagerly launched cells shorter than N tokens are
left out: on one GPU model their time follows the host's kernel-launch rate, which differs by more
than 15% between machines of one kind (results/README.md); CUDA-graph decode is judged at every
length. Cells missing from the candidate, new cells and improvements are reported
and do not fail it; capability measurements (probe, lm_eval) are not judged. Usage mistakes (a
directory without a store, runs sharing no cell) raise `UserError`, which the CLI turns into
exit code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from altbench.errors import UserError
from altbench.report import CAPABILITY, load_rows, runs_under
from altbench.runner import rundir

VERDICTS = ("regressed", "not-ok", "undecided", "missing-in-candidate", "improved", "new", "unchanged")


def _gpu(key: str):
    return lambda env: (env.get("gpu") or {}).get(key)


# (name, how to read it from env.json, whether a difference refuses the comparison)
ENV_ITEMS = (
    ("GPU", _gpu("name"), True),
    ("driver", _gpu("driver"), True),
    ("torch", lambda env: env.get("torch"), True),
    ("triton", lambda env: env.get("triton"), True),  # compiles the kernels under test
    ("CUDA", _gpu("cuda"), False),
    ("Python", lambda env: env.get("python"), False),
    ("git commit", lambda env: (env.get("git_commit") or "")[:12] or None, False),
)


@dataclass
class EnvItem:
    name: str
    baseline: object
    candidate: object
    strict: bool  # a difference refuses the comparison

    @property
    def differs(self) -> bool:
        return self.baseline != self.candidate


@dataclass
class CellVerdict:
    cell_id: str
    verdict: str  # one of VERDICTS
    baseline_ms: float | None = None
    candidate_ms: float | None = None
    change: float | None = None  # candidate median / baseline median - 1
    p_value: float | None = None  # one-sided Mann-Whitney U, in the direction of the change
    method: str = ""  # what decided: threshold (change too small) | mann-whitney | intervals | too few samples
    fails: bool = False  # this cell alone fails the gate
    note: str = ""
    slower: bool = False  # the median moved the slow way


@dataclass
class GateResult:
    baseline: Path
    candidate: Path
    threshold: float
    alpha: float
    env: list[EnvItem]
    refused: bool
    cells: list[CellVerdict] = field(default_factory=list)
    eager_min_len: int = 0
    host_bound: int = 0  # cells left out by eager_min_len
    env_unknown: list[str] = field(default_factory=list)  # "baseline" / "candidate": env.json missing or damaged
    fail_undecided: bool = False  # an undecided slowdown fails the gate

    @property
    def env_mismatch(self) -> list[EnvItem]:
        return [item for item in self.env if item.strict and item.differs]

    @property
    def failing(self) -> list[CellVerdict]:
        return [c for c in self.cells if c.fails]

    @property
    def exit_code(self) -> int:
        """0: no regression; 1: a regression, a breakage, or a refusal to compare."""
        return 1 if self.refused or self.failing else 0

    def counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.cells) for v in VERDICTS}

    def markdown(self) -> str:
        """The verdict for a CI log (GitHub renders it in a job summary too)."""
        if self.refused and self.env_unknown:
            title = f"REFUSED: could not compare environments ({' and '.join(self.env_unknown)} env.json missing or damaged)"
        elif self.refused:
            title = "REFUSED: the environments differ in " + ", ".join(i.name for i in self.env_mismatch)
        elif self.failing:
            title = f"FAIL: {len(self.failing)} of {len(self.cells)} cells regressed or broke"
        else:
            title = f"PASS: no regression in {len(self.cells)} cells"
        lines = [
            f"## altbench gate: {title}", "",
            f"Baseline `{self.baseline}`, candidate `{self.candidate}`. "
            + RULE.format(threshold=self.threshold, alpha=self.alpha, reps=decisive_reps(self.alpha))
            + (" Undecided slowdowns fail the gate (--fail-undecided)." if self.fail_undecided
               else " Undecided cells do not fail the gate (--fail-undecided makes them)."), "",
            "### Environment", "", "| | baseline | candidate | |", "|---|---|---|---|",
        ]
        for item in self.env:
            flag = ("**differs: refuses**" if item.strict else "differs") if item.differs else ""
            lines.append(f"| {item.name} | {_text(item.baseline)} | {_text(item.candidate)} | {flag} |")
        if self.refused and self.env_unknown:
            lines += ["", "Without both environments the timings cannot be shown to be comparable, so no cell was "
                      "judged. Restore the env.json, or judge anyway with `--allow-env-mismatch`.", ""]
            return "\n".join(lines)
        if self.refused:
            lines += ["", "Timings from different setups are not comparable, so no cell was judged. Run the candidate "
                      "on the baseline's setup, record a new baseline there (`altbench gate --update-baseline`), or "
                      "judge anyway with `--allow-env-mismatch`.", ""]
            return "\n".join(lines)
        if self.env_unknown:
            lines += ["", "Could not compare environments; judged anyway (--allow-env-mismatch).", ""]
        elif self.env_mismatch:
            lines += ["", "The environments differ; judged anyway (--allow-env-mismatch).", ""]
        counts = self.counts()
        if self.host_bound:
            lines += ["", f"{self.host_bound} eager cells shorter than {self.eager_min_len} tokens were not judged "
                      "(host-bound: --eager-min-len).", ""]
        lines += ["", "### Cells", "", " · ".join(f"{v}: {n}" for v, n in counts.items() if n), "",
                  "| verdict | cell | baseline ms | candidate ms | change | p | decided by | note |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        order = {v: i for i, v in enumerate(VERDICTS)}
        for c in sorted(self.cells, key=lambda c: (not c.fails, order[c.verdict], c.cell_id)):
            verdict = f"**{c.verdict}**" if c.fails else c.verdict
            lines.append(
                f"| {verdict} | `{c.cell_id}` | {_num(c.baseline_ms)} | {_num(c.candidate_ms)} | "
                f"{'' if c.change is None else f'{c.change:+.1%}'} | {'' if c.p_value is None else f'{c.p_value:.2g}'} | "
                f"{c.method} | {c.note} |")
        return "\n".join(lines) + "\n"


def _text(value) -> str:
    return "–" if value is None else str(value)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _samples(row: dict) -> list[float]:
    return [s for s in row.get("ms_samples") or [] if s is not None and math.isfinite(s)]


RULE = ("A cell regresses when its median is more than {threshold:.0%} slower and the slowdown is distinguishable: "
        "one-sided Mann-Whitney U on the timed samples with p < {alpha:g}, or non-overlapping 95% intervals where "
        "samples are too few for the test; a cell with neither is undecided ({reps} reps per side would decide it).")


def decisive_reps(alpha: float, baseline: int | None = None) -> int:
    """The fewest candidate samples (as many as the baseline's, or `baseline` of them) with which the
    Mann-Whitney test can reach p < alpha."""
    n = 2
    while 1 / math.comb((baseline or n) + n, n) >= alpha:
        n += 1
    return n


def distinguishable(base: dict, cand: dict, slower: bool, alpha: float) -> tuple[bool | None, float | None, str]:
    """Whether the candidate is reliably slower (or faster) than the baseline, by `RULE`: (yes, p, method),
    yes None when the cell recorded too little to tell."""
    from scipy.stats import mannwhitneyu

    b, c = _samples(base), _samples(cand)
    if len(b) >= 2 and len(c) >= 2 and 1 / math.comb(len(b) + len(c), len(b)) < alpha:
        p = float(mannwhitneyu(c, b, alternative="greater" if slower else "less").pvalue)
        return p < alpha, p, "mann-whitney"
    bounds = (base.get("ms_ci_low"), base.get("ms_ci_high"), cand.get("ms_ci_low"), cand.get("ms_ci_high"))
    if all(v is not None for v in bounds):
        b_low, b_high, c_low, c_high = bounds
        return (c_low > b_high) if slower else (c_high < b_low), None, "intervals"
    return None, None, "too few samples"


def judge_cell(cell_id: str, base: dict | None, cand: dict | None, threshold: float, alpha: float,
               fail_undecided: bool = False) -> CellVerdict:
    if cand is None:
        return CellVerdict(cell_id, "missing-in-candidate", base.get("ms_median"), note="not in the candidate run")
    if base is None:
        return CellVerdict(cell_id, "new", candidate_ms=cand.get("ms_median"), note="not in the baseline")
    b_ok = base.get("status") == "ok" and (base.get("ms_median") or 0) > 0
    c_ok = cand.get("status") == "ok" and (cand.get("ms_median") or 0) > 0
    if not (b_ok and c_ok):
        note = f"baseline {base.get('status')}, candidate {cand.get('status')}"
        if b_ok and cand.get("message"):
            note += f": {cand['message'].splitlines()[0][:120]}"
        return CellVerdict(cell_id, "not-ok", base.get("ms_median"), cand.get("ms_median"), fails=b_ok, note=note)
    b_ms, c_ms = base["ms_median"], cand["ms_median"]
    change = c_ms / b_ms - 1
    verdict = CellVerdict(cell_id, "unchanged", b_ms, c_ms, change, method="threshold", slower=change > 0)
    if abs(change) > threshold:
        real, verdict.p_value, verdict.method = distinguishable(base, cand, verdict.slower, alpha)
        if real is None:
            b, c = len(_samples(base)), len(_samples(cand))
            need = (f"{decisive_reps(alpha, b)} candidate reps" if b >= 2 and decisive_reps(alpha, b) < 100
                    else f"{decisive_reps(alpha)} reps on each side")
            verdict.verdict = "undecided"
            verdict.fails = fail_undecided and verdict.slower
            verdict.note = f"{b} + {c} samples and no intervals: {need} would decide it"
        elif real:
            verdict.verdict = "regressed" if verdict.slower else "improved"
            verdict.fails = verdict.slower
        else:
            verdict.note = "within noise"
    return verdict


def compare_env(baseline: dict, candidate: dict) -> list[EnvItem]:
    return [EnvItem(name, read(baseline), read(candidate), strict) for name, read, strict in ENV_ITEMS]


def _timed(rows: list[dict]) -> dict[str, dict]:
    return {r["cell_id"]: r for r in rows if r.get("measurement") not in CAPABILITY}


def _host_bound(row: dict, eager_min_len: int) -> bool:
    return (row.get("seq_len") or 0) < eager_min_len and not row.get("cuda_graphs")


def judge(
    baseline_dir: Path, candidate_dir: Path, threshold: float = 0.05, alpha: float = 0.002,
    allow_env_mismatch: bool = False, eager_min_len: int = 0, fail_undecided: bool = False,
) -> GateResult:
    """Verdicts for every timed cell of the two runs (see the module docstring)."""
    if not (threshold > 0 and math.isfinite(threshold)):
        raise UserError(f"--threshold must be a positive fraction such as 0.05 (got {threshold})")
    if not 0 < alpha < 1:
        raise UserError(f"alpha (the gate's significance level) must lie between 0 and 1 (got {alpha})")
    baseline_dir, candidate_dir = Path(baseline_dir), Path(candidate_dir)
    if not rundir.is_file(rundir.store_path(baseline_dir)):
        raise UserError(f"--baseline {baseline_dir}: not a run directory (no {rundir.STORE_FILE}); give a "
                        "committed baseline such as results/baselines/<name>")
    base, cand = _timed(load_rows(baseline_dir)), _timed(load_rows(candidate_dir))
    if not base.keys() & cand.keys():
        raise UserError(f"{baseline_dir} and {candidate_dir} share no timed cell; run the candidate with the "
                        "baseline's suite (its suite.toml) on the same device")
    envs = {"baseline": rundir.read_env(baseline_dir), "candidate": rundir.read_env(candidate_dir)}
    result = GateResult(baseline_dir, candidate_dir, threshold, alpha, compare_env(*envs.values()), refused=False,
                        eager_min_len=eager_min_len, env_unknown=[side for side, env in envs.items() if not env],
                        fail_undecided=fail_undecided)
    if (result.env_unknown or result.env_mismatch) and not allow_env_mismatch:
        result.refused = True
        return result
    for cell_id in sorted(base.keys() | cand.keys()):
        if _host_bound(base.get(cell_id) or cand[cell_id], eager_min_len):
            result.host_bound += 1
            continue
        result.cells.append(judge_cell(cell_id, base.get(cell_id), cand.get(cell_id), threshold, alpha, fail_undecided))
    return result


def update_baseline(candidate_dir: Path, baseline_dir: Path) -> list[Path]:
    """Make the candidate run the new baseline: copy its store files, env files and suite.toml over the
    baseline's (each file replaced atomically, the old baseline's others removed); returns the baseline's files."""
    candidate_dir, baseline_dir = Path(candidate_dir), Path(baseline_dir)
    load_rows(candidate_dir)  # a UserError unless the candidate holds finished cells
    if candidate_dir.resolve() == baseline_dir.resolve():
        raise UserError(f"{candidate_dir} is already the baseline; give the run to promote with --candidate")
    rundir.output_dir(baseline_dir)
    sources = rundir.run_files(candidate_dir)
    names = {p.name for p in sources}
    for old in rundir.run_files(baseline_dir):
        if old.name not in names:
            old.unlink()  # never leave the old baseline's file beside the new one's
    return [rundir.write_bytes(baseline_dir / p.name, p.read_bytes()) for p in sources]


def newest_run(root: Path, exclude: Path | None = None) -> Path:
    """The most recent run under `root`, leaving out `exclude` and everything under `root`/baselines."""
    skip = [p.resolve() for p in (exclude, Path(root) / "baselines") if p is not None]
    runs = [r for r in runs_under(root) if not any(r.resolve().is_relative_to(s) for s in skip)]
    if not runs:
        raise UserError(f"no run under {root} to judge; run a suite first or pass --candidate RUN")
    return runs[-1]
