"""lm-evaluation-harness adapter: any altbench model as an `lm_eval.api.model.LM`.

The three request types, on the model contract (forward(ids, state) -> (logits, state), step):

  loglikelihood          log P(continuation | context): contexts + continuations are sorted by
                         length, right-padded into batches (padding after the last real token cannot
                         change a causal model's earlier logits) and run through one forward each.
  loglikelihood_rolling  log P(text) from a prefix token. A model whose state does not grow with the
                         context (a recurrence) reads the text in windows of `max_length` tokens,
                         carrying its state, so the value equals one forward over the whole text.
                         A model whose state grows (attention's KV cache) is scored on lm-eval's
                         disjoint rolling windows instead: each window sees at most `max_length`
                         tokens, as the Hugging Face backend does.
  generate_until         greedy decoding through `step`, stopping at a stop string, at the
                         end-of-text token or after max_gen_toks tokens.

Tasks come from local files through a `TaskManager` (our `tasks/` folder plus any user path); a
task's relative `data_files` are resolved against its YAML's folder, so nothing depends on the
working directory and nothing is downloaded.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
import yaml
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM

from altbench import registry
from altbench.errors import UserError

log = logging.getLogger(__name__)

LOCAL_TASKS = Path(__file__).parent / "tasks"
DATASET_HINT = "set HF_DATASETS_CACHE or use a local task (see altbench/evaluation/tasks)"


# --- tokenizers --------------------------------------------------------------------------------


class Tokenizer(Protocol):
    eot_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 (the vocabulary of the `tiny` sizes); byte 0 is end-of-text."""

    eot_token_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")


class HFTokenizer:
    """The tokenizer saved in a local checkpoint directory (transformers, never downloaded)."""

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise UserError(
                f"{path}: no tokenizer files found ({type(err).__name__}); save the tokenizer beside the weights"
            ) from err
        eot = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.bos_token_id
        if eot is None:
            raise UserError(f"{path}: the tokenizer has neither an EOS nor a BOS token to condition on")
        self.eot_token_id = eot

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)


# --- the LM ------------------------------------------------------------------------------------


def has_bounded_state(model: torch.nn.Module) -> bool:
    """True when the model's state does not grow with the context (a pure recurrence)."""
    return model.state_bytes(1, 1) == model.state_bytes(1, 1 << 20)


class AltbenchLM(LM):
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        batch_size: int = 8,
        max_length: int = 2048,  # tokens per forward: truncation for loglikelihood, window for rolling
        max_gen_toks: int = 256,  # default generation budget when a request names none
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_gen_toks = max_gen_toks
        self._device = next(model.parameters()).device

    # --- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context tokens, continuation tokens) -> (sum of continuation log-probs, all greedy)."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            seqs = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1) :] for i in idx]
            T = max(len(s) for s in seqs) - 1
            ids = torch.zeros(len(seqs), T, dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, : len(s) - 1] = torch.tensor(s[:-1])
            logits, _ = self.model(ids.to(self._device))  # (B, T, V)
            logp = F.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(idx):
                cont = pairs[i][1]
                end = len(seqs[row]) - 1
                lp = logp[row, end - len(cont) : end]  # (n_cont, V)
                target = torch.tensor(cont, device=lp.device)
                total = lp.gather(1, target[:, None]).sum().item()
                out[i] = (total, bool((lp.argmax(-1) == target).all()))
        return out

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Trailing spaces of the context belong to the continuation (lm-eval's convention);
        the split is taken from the encoding of the whole string, as BPE merges across it."""
        if not context:
            return [self.tokenizer.eot_token_id], self.tokenizer.encode(continuation)
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        n_ctx = len(self.tokenizer.encode(context))
        return whole[:n_ctx], whole[n_ctx:]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        return self._score([self._encode_pair(*req.args) for req in requests])

    @torch.no_grad()
    def _rolling_carried(self, tokens: list[int]) -> float:
        """Whole-text log-likelihood, read in windows with the recurrent state carried across."""
        ids = torch.tensor([self.tokenizer.eot_token_id] + tokens, device=self._device)[None]  # (1, n + 1)
        state, total = None, 0.0
        for start in range(0, len(tokens), self.max_length):
            window = ids[:, start : start + self.max_length + 1]  # inputs and the next token
            logits, state = self.model(window[:, :-1], state)  # (1, W, V)
            logp = F.log_softmax(logits.float(), dim=-1)
            total += logp.gather(2, window[:, 1:, None]).sum().item()
        return total

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        out = []
        for (text,) in (req.args for req in requests):
            tokens = self.tokenizer.encode(text)
            if has_bounded_state(self.model):
                out.append(self._rolling_carried(tokens))
                continue
            windows = lm_utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.tokenizer.eot_token_id, max_seq_len=self.max_length, context_len=1
            )
            out.append(sum(ll for ll, _ in self._score([lm_utils.make_disjoint_window(w) for w in windows])))
        return out

    # --- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def _greedy(self, context: list[int], until: list[str], max_gen_toks: int) -> str:
        ids = torch.tensor(context[-self.max_length :], device=self._device)[None]  # (1, T)
        logits, state = self.model(ids)
        token = logits[:, -1].argmax(-1)  # (1,)
        generated: list[int] = []
        for _ in range(max_gen_toks):
            if token.item() == self.tokenizer.eot_token_id:
                break
            generated.append(token.item())
            text = self.tokenizer.decode(generated)
            hits = [text.index(s) for s in until if s in text]
            if hits:
                return text[: min(hits)]
            logits, state = self.model.step(token, state)  # (1, V)
            token = logits.argmax(-1)
        return self.tokenizer.decode(generated)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for context, gen_kwargs in (req.args for req in requests):
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample"):
                log.warning("AltbenchLM decodes greedily; do_sample and temperature are ignored")
            until = gen_kwargs.get("until") or []
            until = [s for s in ([until] if isinstance(until, str) else until) if s]
            max_gen_toks = int(gen_kwargs.get("max_gen_toks", gen_kwargs.get("max_new_tokens", self.max_gen_toks)))
            ctx = self.tokenizer.encode(context) if context else [self.tokenizer.eot_token_id]
            out.append(self._greedy(ctx, until, max_gen_toks))
        return out


# --- tasks and the entry point -----------------------------------------------------------------


def _absolute_data_files(data_files, base: Path):
    """data_files (a path, a list, or a split -> path(s) dict) with relative paths made absolute."""
    if isinstance(data_files, dict):
        return {k: _absolute_data_files(v, base) for k, v in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute_data_files(v, base) for v in data_files]
    return str(base / data_files) if not Path(data_files).is_absolute() else data_files


def _task_specs(names: list[str], manager, builtin: Path, overlay_dir: Path) -> list[str]:
    """Names lm-eval can load: a local task whose data_files are relative gets an overlay YAML
    (`include` of the original, the same data_files made absolute) and is loaded by that path."""
    specs = []
    for name in names:
        entry = manager.task_index.get(name)
        cfg = (entry.cfg or {}) if entry is not None and entry.yaml_path is not None else {}
        data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        if data_files is None or builtin in entry.yaml_path.resolve().parents:
            specs.append(name)
            continue
        kwargs = {**cfg["dataset_kwargs"], "data_files": _absolute_data_files(data_files, entry.yaml_path.parent)}
        overlay = overlay_dir / f"{name}.yaml"
        overlay.write_text(
            yaml.safe_dump({"include": str(entry.yaml_path.resolve()), "task": name, "dataset_kwargs": kwargs})
        )
        specs.append(str(overlay))
    return specs


def _named_anywhere(name: str, root: Path) -> bool:
    """Cheap necessary condition for a built-in task: its name is written in some YAML under root
    (every task, group and tag name is). Saves indexing all built-in tasks (~10 s) for a typo."""
    return any(name in p.read_text(errors="ignore") for p in root.rglob("*.yaml"))


def _load_tasks(names: list[str], include_path: list[Path], overlay_dir: Path):
    """The TaskManager and the loaded Task / Group objects, or a UserError naming the task."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    builtin = Path(lm_eval.tasks.__file__).parent
    manager = TaskManager(include_path=[str(p) for p in include_path], include_defaults=False)
    missing = [n for n in names if n not in manager.all_tasks]
    for name in missing:
        if not _named_anywhere(name, builtin):
            known = ", ".join(manager.all_tasks) or "none"
            raise UserError(
                f"unknown task '{name}'; local tasks: {known} (add a folder of task YAMLs with --include)"
            )
    if missing:
        manager = TaskManager(include_path=[str(p) for p in include_path], include_defaults=True)
        unknown = [n for n in missing if n not in manager.all_tasks]
        if unknown:
            raise UserError(f"unknown task '{unknown[0]}': not a local task nor an lm-eval task")
    loaded = []
    for name, spec in zip(names, _task_specs(names, manager, builtin, overlay_dir)):
        try:
            result = manager.load([spec])
        except Exception as err:  # datasets raises many types when offline or missing
            raise UserError(f"task {name} needs its dataset; {DATASET_HINT}") from err
        loaded += [result["groups"][name]] if name in result["groups"] else list(result["tasks"].values())
    return manager, loaded


def _rows(results: dict) -> list[dict]:
    """lm-eval's {"task": {"acc,none": v, "acc_stderr,none": s, ...}} -> one row per metric."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({
                "task": task,
                "metric": metric if filt == "none" else f"{metric},{filt}",
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            })
    return rows


def build_lm(arch: str, size: str | None, device: str, weights: str | None, batch_size: int,
             max_length: int = 2048, dtype: torch.dtype | None = None) -> AltbenchLM:
    """The model (random weights at `size`, or a local checkpoint) wrapped as an lm-eval LM."""
    dev = torch.device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if weights:
        from altbench.models import hf

        model, tokenizer = hf.load_pretrained(arch, weights, size).to(dev, dtype), HFTokenizer(weights)
    else:
        torch.manual_seed(0)
        model, tokenizer = registry.build(arch, size, dev, dtype), ByteTokenizer()
        if model.config.vocab_size < 256:
            raise UserError(
                f"{arch} {size} has {model.config.vocab_size} tokens; random weights use the 256-byte tokenizer"
            )
    return AltbenchLM(model, tokenizer, batch_size=batch_size, max_length=max_length)


def run_eval(arch: str, size: str | None, tasks: list[str], device: str, weights: str | None = None,
             limit: int | None = None, batch_size: int = 8, include_path: list[str] | None = None,
             max_length: int = 2048) -> list[dict]:
    """Evaluate `arch` on lm-eval `tasks` and return rows (task, metric, value, stderr).

    `size` names a size (random weights unless `weights`); with `weights` (a local Hugging Face
    checkpoint directory holding the tokenizer too) `size` may be None to take the checkpoint's config.
    Tasks are looked up in altbench/evaluation/tasks and `include_path`, then among lm-eval's own.
    """
    from lm_eval import evaluator

    lm = build_lm(arch, size, device, weights, batch_size, max_length)
    paths = [LOCAL_TASKS] + [Path(p) for p in include_path or []]
    with tempfile.TemporaryDirectory(prefix="altbench-tasks-") as overlay_dir:
        manager, loaded = _load_tasks(list(tasks), paths, Path(overlay_dir))
        results = evaluator.simple_evaluate(
            model=lm, tasks=loaded, task_manager=manager, limit=limit, batch_size=batch_size, log_samples=False
        )
    return _rows(results)
