"""Train a registered altbench model from scratch on a synthetic probe and score it on held-out data.

Recipe (as in Zoology's MQAR sweeps, arXiv:2312.04927, app. E): AdamW, linear warm-up then cosine
decay to zero, gradient clipping at 1, a fixed number of steps (or a token budget that sets it),
loss only on the scored positions, bf16 autocast on CUDA (fp32 weights). Training batch i uses seed
`seed * 2**20 + i`; the test set of scored point j uses seed `2**40 + seed * 2**10 + j`, so train
and test data never share a seed. When several axis points are given, training cycles through them
step by step and accuracy is reported per point. `test_seq_len` adds points that are scored but never trained on:
each trained point again at those lengths (length extrapolation, as in the Mamba paper's induction
heads, sec. 4.1.2).

Grid-to-grid tasks (`ProbeTask.bidirectional`, e.g. Sudoku) need every input cell for every
answer: a model without a causal mask (HRM) trains as it is; a causal Transformer is built as a
non-causal encoder of the same parameters (`causal=False`: same weights, no mask), which is how the
HRM paper's Transformer baseline reads Sudoku; a model that has only a causal form is refused.
An iterative model (ITERATIVE: HRM) trains with its own loop, ACT with deep supervision: each
optimiser step is one segment of the batch in flight, halted puzzles replaced by fresh ones
(`HRM.act_step`); it is scored after all of its max_segments segments, as the paper evaluates.
Tasks with `exact` are also scored per sequence (all scored positions right: a solved puzzle).
"""

from __future__ import annotations

import inspect
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from altbench import registry
from altbench.errors import UserError
from altbench.models.base import BIDIRECTIONAL, ITERATIVE
from altbench.probes.tasks import TASKS, ProbeTask

TEST_SEED_BASE = 2**40


@dataclass
class ProbeSettings:
    points: list[dict]  # axis values per evaluated point, e.g. [{"seq_len": 64, "num_kv_pairs": 4}]
    vocab: int  # probe vocabulary; the model is built with this vocab_size
    steps: int = 2000  # optimiser steps (a `tokens` budget in the settings dict sets it instead)
    batch: int = 64  # sequences per step
    lr: float = 3e-3  # MQAR (64, 4), tiny, 2000 steps on an H100: accuracy 0.87 at 3e-3, 0.13 at 1e-3
    weight_decay: float = 0.1  # on matrices only (no decay on norms, biases, 1-D parameters)
    warmup: float = 0.1  # fraction of steps with linear warm-up
    test_examples: int = 1000  # held-out sequences per point
    seed: int = 0  # model initialisation and data seeds
    log_every: int = 0  # training-curve resolution in steps; 0 means steps // 100 (at least 1)
    test_seq_len: list[int] = field(default_factory=list)  # untrained lengths every point is also scored at
    overrides: dict = field(default_factory=dict)  # model config overrides, e.g. {"d_model": 128}

    @classmethod
    def from_dict(cls, task: str, settings: dict) -> "ProbeSettings":
        """Settings from a suite: scalar fields above, plus axis values. Each axis is a value or a
        list (points are the grid of all lists), or `points` lists the points explicitly."""
        probe = probe_task(task)
        names = {f.name for f in fields(cls)} - {"points"}
        params = set(inspect.signature(probe.make).parameters) - {"vocab", "batch", "seed"}
        unknown = set(settings) - names - params - {"points", "tokens"}
        if unknown:
            raise UserError(f"probe {task}: unknown setting(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(names | params | {'points', 'tokens'}))}")
        axes = {k: v for k, v in {**probe.axes, **settings}.items() if k in params}
        if "points" in settings:
            if any(isinstance(v, list) for v in axes.values()) or any(set(p) - params for p in settings["points"]):
                known = ", ".join(sorted(params))
                raise UserError(f"probe {task}: each point sets only {known}, beside scalar defaults")
            points = [{**axes, **p} for p in settings["points"]]
        else:
            grid = {k: v if isinstance(v, list) else [v] for k, v in axes.items()}
            points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        kwargs = {k: v for k, v in settings.items() if k in names}
        out = cls(points=points, vocab=kwargs.pop("vocab", probe.vocab), **kwargs)
        if "tokens" in settings:
            mean_len = sum(p["seq_len"] for p in points) / len(points)
            out.steps = max(1, math.ceil(settings["tokens"] / (out.batch * mean_len)))
        if out.steps >= 2**20:
            raise UserError(f"probe {task}: at most {2**20 - 1} steps (training seeds would overlap)")
        if not isinstance(out.test_seq_len, list) or not all(isinstance(n, int) and n > 0 for n in out.test_seq_len):
            raise UserError(f"probe {task}: test_seq_len must be a list of positive lengths, got {out.test_seq_len!r}")
        return out

    def test_points(self) -> list[tuple[dict, int]]:
        """(point, train_seq_len) for every scored point: the trained points, then each trained point
        at the `test_seq_len` lengths it was not trained at, with the longest length trained at
        under the point's other axis values."""
        out = [(p, p["seq_len"]) for p in self.points]
        for p in self.points:
            trained = [q["seq_len"] for q in self.points if {**q, "seq_len": 0} == {**p, "seq_len": 0}]
            for n in self.test_seq_len:
                extra = ({**p, "seq_len": n}, max(trained))
                if n not in trained and extra not in out:
                    out.append(extra)
        return out


@dataclass
class ProbeResult:
    correct: list[int]  # per point: scored predictions that were right
    total: list[int]  # per point: scored predictions
    curve: list[tuple[int, float]]  # (step, mean training loss over the steps since the last entry)
    solved: list[int] = field(default_factory=list)  # per point: sequences with every scored prediction right
    sequences: list[int] = field(default_factory=list)  # per point: sequences scored
    scored: list[list[int]] = field(default_factory=list)  # per point: scored positions of each sequence

    def exact(self, j: int) -> tuple[float, float]:
        """Fraction of point j's sequences solved entirely, and its binomial standard error."""
        p = self.solved[j] / self.sequences[j]
        return p, math.sqrt(p * (1 - p) / self.sequences[j])

    def accuracy(self, j: int) -> tuple[float, float]:
        """Accuracy of point j and its binomial standard error sqrt(p (1 - p) / n)."""
        p = self.correct[j] / self.total[j]
        return p, math.sqrt(p * (1 - p) / self.total[j])


def probe_task(task: str) -> ProbeTask:
    if task not in TASKS:
        raise UserError(f"unknown probe '{task}'; known: {', '.join(TASKS)}")
    return TASKS[task]


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over `warmup_steps`, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in fp32 over the scored positions only."""
    return F.cross_entropy(logits[mask].float(), targets[mask])


def training_batches(task: str, s: ProbeSettings, device: torch.device):
    """(inputs, targets, loss_mask) of every training step on `device`, each generated on the CPU in
    a thread while the previous step computes (MQAR's batches cost as much as a tiny model's step)."""
    probe = probe_task(task)

    def make(step: int) -> tuple:
        point = s.points[step % len(s.points)]
        return probe.make(s.vocab, batch=s.batch, seed=s.seed * 2**20 + step, **point)

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(make, 0)
        for step in range(s.steps):
            batch = ahead.result()
            if step + 1 < s.steps:
                ahead = pool.submit(make, step + 1)
            yield tuple(t.to(device) for t in batch)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the cell's accuracy would measure a broken model."""


def diverged_message(curve: list[tuple[int, float]], lr: float) -> str:
    step, loss = curve[-1]
    finite = [(n, value) for n, value in curve if math.isfinite(value)]
    last = f"last finite {finite[-1][1]:.3g} at step {finite[-1][0]}" if finite else "never finite"
    return f"training loss {loss} at step {step} ({last}; lr {lr:g}): lower the probe's lr in the suite"


def train_probe(model: torch.nn.Module, task: str, s: ProbeSettings, device: torch.device) -> ProbeResult:
    probe = probe_task(task)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, betas=(0.9, 0.98), fused=device.type == "cuda",
    )
    warmup_steps = max(1, int(s.warmup * s.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, s.steps, warmup_steps))
    log_every = s.log_every or max(1, s.steps // 100)

    model.train()
    curve, running = [], []
    act = None  # the batch in flight of an iterative model
    for step, (x, y, m) in enumerate(training_batches(task, s, device)):
        with torch.autocast(**autocast):
            if ITERATIVE in model.capabilities:
                loss, act, _ = model.act_step(act, x, y, m)
            else:
                logits, _ = model(x)  # (B, T, V)
                loss = masked_loss(logits, y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == s.steps:  # the only host sync of the loop
            curve.append((step + 1, torch.stack(running).mean().item()))
            running = []
            if not math.isfinite(curve[-1][1]):
                raise TrainingDiverged(diverged_message(curve, s.lr))

    model.eval()
    result = ProbeResult([], [], curve)
    with torch.no_grad(), torch.autocast(**autocast):
        for j, (point, _) in enumerate(s.test_points()):
            seed = TEST_SEED_BASE + s.seed * 2**10 + j
            x, y, m = (t.to(device) for t in probe.make(s.vocab, batch=s.test_examples, seed=seed, **point))
            hits = solved = 0
            for xb, yb, mb in zip(x.split(s.batch), y.split(s.batch), m.split(s.batch)):
                right = predict(model, xb).argmax(-1) == yb  # (b, T)
                hits += right[mb].sum().item()
                solved += (right | ~mb).all(1).sum().item()
            result.correct.append(hits)
            result.total.append(int(m.sum()))
            result.solved.append(solved)
            result.sequences.append(x.shape[0])
            result.scored.append(m.sum(1).tolist())
    return result


def predict(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) for scoring: one forward pass, or all max_segments segments of an iterative model."""
    if ITERATIVE in model.capabilities:
        return model.reason(inputs, model.config.max_segments)[0]
    return model(inputs)[0]


def build_for(arch: str, size: str, task: str, device: torch.device, vocab: int, overrides: dict):
    """The model `arch` at `size` for `task`: on a bidirectional task, a causal model with a `causal`
    option is built as an encoder (causal=False); one without is refused. A bidirectional model is
    refused on a task whose answers are next tokens (it would read them)."""
    config = registry.config(arch, size, vocab_size=vocab, **overrides)
    bidirectional_model = BIDIRECTIONAL in registry.family(arch).MODEL.capabilities
    if probe_task(task).shifted and bidirectional_model:
        raise UserError(f"probe {task}: each answer is the next input token, which {arch} reads (it has no causal "
                        "mask); use a causal model, or mqar or sudoku for a bidirectional one")
    if probe_task(task).bidirectional and not bidirectional_model:
        if not hasattr(config, "causal"):
            raise UserError(f"probe {task}: every answer depends on the whole grid, and {arch} has only a causal form; "
                            "use a bidirectional model (hrm) or one with a causal option (transformer)")
        overrides = {"causal": False, **overrides}
    return registry.build(arch, size, device, torch.float32, vocab_size=vocab, **overrides)


def run_probe(arch: str, size: str, task: str, device: str, settings: dict) -> list[dict]:
    """Train `arch` at `size` from scratch on probe `task` and return one store-row fragment per
    scored point: task, metric ("accuracy"), value, stderr (binomial), curve, seed, steps, chance,
    n_scored, lr, vocab, train_batch, train_seq_len and the point's axis values (seq_len,
    num_kv_pairs, ...)."""
    s = ProbeSettings.from_dict(task, settings)
    dev = torch.device(device)
    torch.manual_seed(s.seed)
    model = build_for(arch, size, task, dev, s.vocab, s.overrides)
    if model.config.tie_embeddings:
        with torch.no_grad():  # GPT-2 / Mamba training init: with a tied head, N(0, 1) starts at logits ~ d
            model.embed.weight.normal_(0.0, 0.02)
    result = train_probe(model, task, s, dev)
    probe = probe_task(task)
    rows = []
    for j, (point, train_seq_len) in enumerate(s.test_points()):
        chance = 1 / probe.answers(s.vocab, point)
        common = {
            "task": task, "curve": [list(c) for c in result.curve], "seed": s.seed, "steps": s.steps, "lr": s.lr,
            "vocab": s.vocab, "train_batch": s.batch, "train_seq_len": train_seq_len, **point,
        }
        value, stderr = result.accuracy(j)
        rows.append({**common, "metric": "accuracy", "value": value, "stderr": stderr, "chance": chance,
                     "n_scored": result.total[j]})
        if probe.exact:  # chance of a solved sequence: every scored position guessed right
            value, stderr = result.exact(j)
            guessed = sum(chance**k for k in result.scored[j]) / result.sequences[j]
            rows.append({**common, "metric": "exact_accuracy", "value": value, "stderr": stderr, "chance": guessed,
                         "n_scored": result.sequences[j]})
    return rows
