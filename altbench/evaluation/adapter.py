"""lm-evaluation-harness adapter: any altbench model as an `lm_eval.api.model.LM` that scores a
checkpoint exactly as lm-eval's own Hugging Face backend (`HFLM`, `--model hf`) does.

The conventions are those of lm-eval 0.4.13's `HFLM` (pinned in pyproject.toml; the parity test
tests/test_eval_parity.py holds them):

  prefix token           an empty context, and the first rolling window, are conditioned on
                         `prefix_token_id`: the tokenizer's BOS, else its EOS, unless given.
  special tokens         text is encoded with the tokenizer's own default (a Llama-style tokenizer
                         adds BOS), or with `add_bos_token` when given; a string that already
                         starts with the prefix token's text gets nothing added.
  loglikelihood          lm-eval's `TemplateLM` splits context and continuation; the sequence is
                         left-truncated to `max_length + 1` tokens and run right-padded in batches.
  loglikelihood_rolling  lm-eval's disjoint windows of `max_length` tokens, each window a fresh
                         start. With `carry_state` the model instead reads the whole text window by
                         window with its state carried, which equals one forward over the text.
  masked diffusion       a bidirectional model (LLaDA) has no next-token probabilities: a
                         continuation's log-likelihood is the Monte-Carlo estimate of its lower
                         bound over `mc_samples` draws (`LLaDA.loglikelihood`; the same draws,
                         seeded by `mc_seed`, for every request), and is_greedy is not estimated
                         (always False); generation runs its denoising sampler with one block and
                         one step per token. A rolling window's first token is conditioned on the
                         prefix token like any other continuation.
  generate_until         greedy decoding through `step` from the context's last
                         `max_length - max_gen_toks` tokens, stopping at the checkpoint's
                         end-of-sequence ids or after max_gen_toks tokens; decoded with special
                         tokens skipped, then cut at each stop string in turn (the EOS text among them).

Tasks come from local files through a `TaskManager` (our `tasks/` folder plus any user path); a
task's relative `data_files` are resolved against its YAML's folder, so nothing depends on the
working directory and nothing is downloaded.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    DEFAULT_MAX_LENGTH,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)

from altbench import registry
from altbench.errors import UserError
from altbench.evaluation.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from altbench.measure.scenarios import lacking
from altbench.models.base import MASKED_DIFFUSION, SEGMENTED_PREFILL

log = logging.getLogger(__name__)

LOCAL_TASKS = Path(__file__).parent / "tasks"
DATASET_HINT = "set HF_DATASETS_CACHE or use a local task (see altbench/evaluation/tasks)"


class AltbenchLM(TemplateLM):
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        batch_size: int = 8,
        max_length: int = DEFAULT_MAX_LENGTH,  # tokens per forward: truncation, rolling window, context + generation
        max_gen_toks: int = 256,  # generation budget when a request names none
        prefix_token_id: int | None = None,  # conditions empty contexts and rolling windows (None: BOS, else EOS)
        add_bos_token: bool | None = None,  # add special tokens when encoding (None: the tokenizer's default)
        stop_token_ids: list[int] | None = None,  # end a generation (None: the tokenizer's EOS)
        carry_state: bool = False,  # rolling: one pass with the state carried across windows, not lm-eval's restarts
        mc_samples: int = 128,  # masked diffusion: Monte-Carlo draws per log-likelihood
        mc_seed: int = 0,  # masked diffusion: seeds each request's draws
    ):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_gen_toks = max_gen_toks
        self.custom_prefix_token_id = prefix_token_id
        self.add_bos_token = add_bos_token
        self.stop_token_ids = set(stop_token_ids if stop_token_ids is not None else [tokenizer.eos_token_id])
        self.carry_state = carry_state
        self.mc_samples, self.mc_seed = mc_samples, mc_seed
        self.masked_diffusion = MASKED_DIFFUSION in getattr(model, "capabilities", ())
        self._device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """An explicit `add_special_tokens` wins, then `add_bos_token`, then the tokenizer's default;
        left to the default, a string that starts with the prefix token's text gets nothing added."""
        add = add_special_tokens if add_special_tokens is not None else self.add_bos_token
        if add_special_tokens is None and string.startswith(self.tokenizer.decode([self.prefix_token_id])):
            add = False
        return self.tokenizer.encode(string, add)

    # --- scoring -----------------------------------------------------------------------------
    def _score_masked(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context, continuation) -> (Monte-Carlo log-likelihood bound, False) for a masked diffusion model."""
        out = []
        for ctx, cont in pairs:
            seq = (ctx + cont)[-self.max_length :]
            ids = torch.tensor(seq, device=self._device)
            split = len(seq) - len(cont)
            generator = torch.Generator().manual_seed(self.mc_seed)
            ll = self.model.loglikelihood(ids[:split], ids[split:], self.mc_samples, self.batch_size, generator)
            out.append((ll, False))
        return out

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context tokens, continuation tokens) -> (sum of continuation log-probs, all greedy)."""
        if self.masked_diffusion:
            return self._score_masked(pairs)
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

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """`requests`: ((context, continuation), context tokens, continuation tokens) from TemplateLM."""
        return self._score([(ctx, cont) for _, ctx, cont in requests])

    @torch.no_grad()
    def _rolling_carried(self, tokens: list[int]) -> float:
        """Whole-text log-likelihood, read in windows with the model's state carried across."""
        ids = torch.tensor([self.prefix_token_id] + tokens, device=self._device)[None]  # (1, n + 1)
        state, total = None, 0.0
        for start in range(0, len(tokens), self.max_length):
            window = ids[:, start : start + self.max_length + 1]  # inputs and the next token
            logits, state = self.model(window[:, :-1], state)  # (1, W, V)
            logp = F.log_softmax(logits.float(), dim=-1)
            total += logp.gather(2, window[:, 1:, None]).sum().item()
        return total

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        if self.carry_state:
            return [self._rolling_carried(self.tok_encode(text)) for text in texts]
        owners, windows = [], []
        for i, text in enumerate(texts):
            for window in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1,
            ):
                owners.append(i)
                windows.append(lm_utils.make_disjoint_window(window))
        out = [0.0] * len(texts)
        for i, (ll, _) in zip(owners, self._score(windows)):
            out[i] += ll
        return out

    # --- generation --------------------------------------------------------------------------
    def _encode_context(self, context: str) -> list[int]:
        """A generation's context: nothing added when it starts with the BOS text, else as `tok_encode`."""
        bos = self.tokenizer.bos_token
        add = False if bos is not None and context.startswith(bos) else self.add_bos_token
        return self.tokenizer.encode(context, add)

    def _denoised(self, context: list[int], until: list[str], max_gen_toks: int) -> str:
        """A masked diffusion model's answer: one block of max_gen_toks tokens, one step per token, cut
        at the first stop token, then at the stop strings."""
        prompt = torch.tensor(context, device=self._device)[None]
        answer = self.model.generate(prompt, max_gen_toks, max_gen_toks, max_gen_toks)[0, len(context) :].tolist()
        stop = next((i for i, t in enumerate(answer) if t in self.stop_token_ids), len(answer))
        return postprocess_generated_text(self.tokenizer.decode(answer[:stop], skip_special_tokens=True), until, None)

    @torch.no_grad()
    def _greedy(self, context: list[int], until: list[str], max_gen_toks: int) -> str:
        if self.masked_diffusion:
            return self._denoised(context, until, max_gen_toks)
        logits, state = self.model(torch.tensor(context, device=self._device)[None])  # (1, T, V)
        logits = logits[:, -1]  # (1, V)
        generated: list[int] = []
        for _ in range(max_gen_toks):
            token = logits.argmax(-1)  # (1,)
            generated.append(token.item())
            if generated[-1] in self.stop_token_ids:
                break
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if any(s in text for s in until):
                break
            logits, state = self.model.step(token, state)  # (1, V)
        return postprocess_generated_text(self.tokenizer.decode(generated, skip_special_tokens=True), until, None)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        eos_text = self.tokenizer.decode([self.eot_token_id])
        out = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs or {}, self.max_gen_toks)
            if kwargs.get("do_sample"):
                log.warning("AltbenchLM decodes greedily; do_sample and temperature are ignored")
            until = [s for s in handle_stop_sequences(kwargs["until"], eos=eos_text) if s]
            max_gen_toks = kwargs["max_gen_toks"]
            if max_gen_toks >= self.max_length:
                raise UserError(
                    f"a task asks for {max_gen_toks} generated tokens, not less than max_length {self.max_length}; "
                    "raise --max-length"
                )
            ctx = self._encode_context(context)[-(self.max_length - max_gen_toks) :] or [self.prefix_token_id]
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


def checkpoint_defaults(path: str, tokenizer: HFTokenizer) -> tuple[int, list[int]]:
    """What transformers and lm-eval take from a checkpoint directory: the context length
    (lm-eval's `resolve_max_length`: config, then tokenizer, then 2048) and the ids that end
    `generate` (generation_config.json, else config.json)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        generation = GenerationConfig.from_pretrained(path, local_files_only=True)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    eos = generation.eos_token_id
    stop = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return resolve_max_length(config, tokenizer.tok, default=DEFAULT_MAX_LENGTH), stop


def build_lm(arch: str, size: str | None, device: str, weights: str | None, batch_size: int,
             max_length: int | None = None, prefix_token_id: int | None = None, add_bos_token: bool | None = None,
             carry_state: bool = False, dtype: torch.dtype | None = None, mc_samples: int = 128,
             mc_seed: int = 0) -> AltbenchLM:
    """The model (random weights at `size` with the byte tokenizer, or a local checkpoint with its
    own tokenizer) wrapped as an lm-eval LM; the options are `AltbenchLM`'s, and `max_length`
    defaults as in lm-eval's HF backend."""
    dev = torch.device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if weights:
        from altbench.models import hf

        model, tokenizer = hf.load_pretrained(arch, weights, size).to(dev, dtype), HFTokenizer(weights, add_bos_token)
        default_length, stop = checkpoint_defaults(weights, tokenizer)
    else:
        torch.manual_seed(0)
        model, tokenizer = registry.build(arch, size, dev, dtype), ByteTokenizer()
        if model.config.vocab_size < 256:
            raise UserError(
                f"{arch} {size} has {model.config.vocab_size} tokens; random weights use the 256-byte tokenizer"
            )
        default_length, stop = DEFAULT_MAX_LENGTH, [tokenizer.eos_token_id]
    if reason := lacking(model.capabilities, "lm_eval"):
        raise UserError(f"{arch} cannot be scored by lm-eval: it has {reason}; evaluate a causal or masked diffusion LM")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise UserError(f"mc_samples must be a positive integer (Monte-Carlo draws per log-likelihood), got {mc_samples!r}")
    if carry_state and SEGMENTED_PREFILL not in model.capabilities:
        raise UserError(f"carry_state: {arch} carries no state across windows; leave carry_state off")
    vocab = model.config.vocab_size
    if prefix_token_id is not None and not 0 <= prefix_token_id < vocab:
        raise UserError(f"prefix token id {prefix_token_id} is outside the vocabulary of {vocab} tokens")
    return AltbenchLM(model, tokenizer, batch_size=batch_size, max_length=max_length or default_length,
                      prefix_token_id=prefix_token_id, add_bos_token=add_bos_token, stop_token_ids=stop,
                      carry_state=carry_state, mc_samples=mc_samples, mc_seed=mc_seed)


def run_eval(arch: str, size: str | None, tasks: list[str], device: str, weights: str | None = None,
             limit: int | None = None, batch_size: int = 8, include_path: list[str] | None = None,
             **lm_options) -> list[dict]:
    """Evaluate `arch` on lm-eval `tasks` and return rows (task, metric, value, stderr).

    `size` names a size (random weights unless `weights`); with `weights` (a local Hugging Face
    checkpoint directory holding the tokenizer too) `size` may be None to take the checkpoint's config.
    Tasks are looked up in altbench/evaluation/tasks and `include_path`, then among lm-eval's own.
    `lm_options` (max_length, prefix_token_id, add_bos_token, carry_state, mc_samples, mc_seed) go to `build_lm`.
    """
    from lm_eval import evaluator

    lm = build_lm(arch, size, device, weights, batch_size, **lm_options)
    paths = [LOCAL_TASKS] + [Path(p) for p in include_path or []]
    with tempfile.TemporaryDirectory(prefix="altbench-tasks-") as overlay_dir:
        manager, loaded = _load_tasks(list(tasks), paths, Path(overlay_dir))
        results = evaluator.simple_evaluate(
            model=lm, tasks=loaded, task_manager=manager, limit=limit, batch_size=batch_size, log_samples=False
        )
    return _rows(results)
