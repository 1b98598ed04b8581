"""`altbench eval` scores a checkpoint as lm-eval's own Hugging Face backend (`HFLM`, `--model hf`)
does: the same per-request log-likelihoods (fp32, within 1e-4), `is_greedy` flags, greedy
generations and task metrics, for every request type, at batch size 1 and 8, with a `max_length`
short enough to force rolling windows and left truncation.

Each checkpoint is built here, offline: a byte-level BPE trained on text the test writes, saved
beside a tiny transformers model with random weights. The tokenizer conventions are those that
changed scores before (issue 23): BOS = EOS with nothing added (GPT-NeoX), BOS != EOS with nothing
added, and BOS != EOS with the tokenizer adding BOS (Llama, Gemma), each on a Llama checkpoint;
then the transformers classes altbench maps (Mamba, Mamba-2, xLSTM, RecurrentGemma) with the
Llama-style tokenizer.
"""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's HF backend imports it
transformers = pytest.importorskip("transformers")

from lm_eval import evaluator  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from altbench import registry  # noqa: E402
from altbench.evaluation import run_eval  # noqa: E402
from altbench.evaluation.adapter import build_lm  # noqa: E402

TOL = 1e-4
MAX_LENGTH = 32  # tokens: forces rolling windows, left truncation and a short generation context
VOCAB = 300
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "Question: what is two plus two? Answer: four. Question: what colour is the sky? Answer: blue.\n"
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. Hello world!\n"
)
CONVENTIONS = {  # name -> (special tokens, BOS, EOS, tokenizer adds BOS)
    "bos=eos": (["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", False),
    "bos!=eos": (["<s>", "</s>"], "<s>", "</s>", False),
    "adds-bos": (["<s>", "</s>"], "<s>", "</s>", True),
}
ARCHS = {  # altbench arch -> overrides of its tiny config
    "transformer": {},
    "mamba": {},
    "mamba2": {},
    "xlstm": dict(chunk_size=8),
    "griffin": dict(n_layers=3),  # recurrent, recurrent, local attention
}


@pytest.fixture(scope="module", autouse=True)
def offline_hf_home(tmp_path_factory):
    """datasets and transformers caches in a temporary folder; one thread on the two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        import datasets

        home = tmp_path_factory.mktemp("hf_home")
        mp.setenv("HF_HOME", str(home))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
        yield
    torch.set_num_threads(threads)


def save_tokenizer(path, convention: str):
    """A byte-level BPE trained on CORPUS (written to disk first), saved as a transformers tokenizer."""
    specials, bos, eos, adds_bos = CONVENTIONS[convention]
    corpus = path / "corpus.txt"
    corpus.write_text(CORPUS * 4)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(corpus)], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, show_progress=False))  # only CORPUS's characters: clean decoding
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.save_pretrained(path)
    return fast


def save_checkpoint(path, arch: str, convention: str) -> None:
    """A tiny transformers model of `arch`'s class with random weights and the tokenizer, in `path`."""
    tok = save_tokenizer(path, convention)
    fam = registry.family(arch)
    config = fam.to_hf_config(registry.config(arch, "tiny", vocab_size=VOCAB, **ARCHS[arch]))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, None
    torch.manual_seed(0)
    model = getattr(transformers, fam.HF_CLASS)(config)
    with torch.no_grad():
        for weight in model.parameters():  # wide enough that every token of the context changes the generation
            if weight.ndim == 2:
                weight += 0.2 * torch.randn_like(weight)
        # end-of-sequence wherever "o" would be predicted: generations end early
        head = model.get_output_embeddings().weight  # (V, D)
        head[tok.eos_token_id] = 1.01 * head[tok.convert_tokens_to_ids("o")]
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(arch, convention) -> checkpoint directory, built on first use."""
    built = {}

    def get(arch, convention):
        if (arch, convention) not in built:
            path = tmp_path_factory.mktemp(f"{arch}-{convention}")
            save_checkpoint(path, arch, convention)
            built[arch, convention] = path
        return built[arch, convention]

    return get


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def requests(bos: str) -> dict[str, list[Instance]]:
    """Requests of the three types; contexts cover the empty one, trailing spaces, a leading BOS
    text, and texts longer than MAX_LENGTH."""
    long = "Sphinx of black quartz, judge my vow. " * 6
    ll = [("Question: what is two plus two? Answer:", " four"), ("The quick brown", " fox jumps over the lazy dog."),
          ("", "Pack my box"), ("Hello ", "world"), (bos + "The lazy", " dog"), (long, " Answer: blue."),
          ("How vexingly", " quick daft zebras jump!")]
    rolling = [CORPUS, "Answer: four.", long, bos + "Pack my box with five dozen liquor jugs."]
    gen = [("Question: what colour is the sky? Answer:", {"until": ["\n"], "max_gen_toks": 12}),
           ("The quick brown fox", {"until": ["."], "max_gen_toks": 10}),
           (long, {"until": ["Sphinx"], "max_gen_toks": 8}),
           ("Pack my", {"max_gen_toks": 6}),
           (bos + "How vexingly", {"until": ["zebras", " jump"], "max_gen_toks": 12})]
    return {"loglikelihood": instances("loglikelihood", ll),
            "loglikelihood_rolling": instances("loglikelihood_rolling", [(t,) for t in rolling]),
            "generate_until": instances("generate_until", gen)}


def hflm(path, batch_size: int, **options) -> HFLM:
    return HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=batch_size, max_length=MAX_LENGTH,
                **options)


def answers(lm, reqs: dict[str, list[Instance]]) -> dict[str, list]:
    return {kind: getattr(lm, kind)(batch) for kind, batch in reqs.items()}


def greedy_requests(gen: list[Instance], generations: list[str]) -> list[Instance]:
    """loglikelihood requests whose continuation is the generation: is_greedy cases."""
    return instances("loglikelihood", [(r.args[0], g) for r, g in zip(gen, generations) if g])


def compare(theirs: dict, ours: dict) -> tuple[float, int]:
    """(max |delta log-likelihood| over loglikelihood and rolling requests, differing generations);
    `is_greedy` flags must agree."""
    deltas = [abs(a[0] - b[0]) for a, b in zip(theirs["loglikelihood"], ours["loglikelihood"], strict=True)]
    deltas += [abs(a - b) for a, b in zip(theirs["loglikelihood_rolling"], ours["loglikelihood_rolling"], strict=True)]
    assert [g for _, g in ours["loglikelihood"]] == [g for _, g in theirs["loglikelihood"]], "is_greedy flags differ"
    differing = sum(a != b for a, b in zip(theirs["generate_until"], ours["generate_until"], strict=True))
    return max(deltas), differing


def check(arch, path, bos, batch_size, **options):
    """HFLM and altbench's LM for `altbench eval --weights path` on the same requests and options."""
    reqs = requests(bos)
    theirs_lm = hflm(path, batch_size, **options)
    ours_lm = build_lm(arch, None, "cpu", str(path), batch_size, max_length=MAX_LENGTH, **options)
    theirs, ours = answers(theirs_lm, reqs), answers(ours_lm, reqs)
    greedy = greedy_requests(reqs["generate_until"], theirs["generate_until"])  # a call of their own: see
    theirs["loglikelihood"] += theirs_lm.loglikelihood(greedy)  # test_hflm_logits_cache_misreads_a_shared_prefix
    ours["loglikelihood"] += ours_lm.loglikelihood(greedy)
    delta, differing = compare(theirs, ours)
    print(f"{path.name} bs{batch_size}: max |dLL| {delta:.2e}, differing generations {differing}; "
          f"greedy {sum(g for _, g in theirs['loglikelihood'])}, generations {theirs['generate_until']}")
    assert delta <= TOL
    assert ours["generate_until"] == theirs["generate_until"]


@pytest.mark.parametrize("batch_size", [1, 8], ids=["bs1", "bs8"])
@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_requests_match_hflm_per_tokenizer_convention(checkpoints, convention, batch_size):
    path = checkpoints("transformer", convention)
    check("transformer", path, CONVENTIONS[convention][1], batch_size)


@pytest.mark.parametrize("batch_size", [1, 8], ids=["bs1", "bs8"])
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "transformer"])
def test_requests_match_hflm_per_architecture(checkpoints, arch, batch_size):
    check(arch, checkpoints(arch, "adds-bos"), "<s>", batch_size)


@pytest.mark.parametrize("options", [dict(add_bos_token=True, prefix_token_id=1), dict(add_bos_token=False)],
                         ids=["add-bos-prefix-eos", "no-bos"])
def test_options_match_hflm(checkpoints, options):
    """HFLM's add_bos_token and prefix_token_id, given to both (the eval command's --add-bos-token,
    --no-add-bos-token and --prefix-token-id)."""
    check("transformer", checkpoints("transformer", "bos!=eos" if options["add_bos_token"] else "adds-bos"),
          "<s>", 8, **options)


def test_hflm_logits_cache_misreads_a_shared_prefix(checkpoints):
    """A documented difference, in lm-eval 0.4.13 itself: HFLM's default logits cache runs one
    request per distinct context + continuation[:-1] and reads the others' log-probs from it, but at
    the first continuation positions rather than the last. ("", "Pack my box") and ("Pack my",
    " colour") share that key under a BOS-adding tokenizer, so HFLM scores " colour" given "<s>"
    alone. altbench scores every request on its own: HFLM's value without the cache."""
    path = checkpoints("transformer", "adds-bos")
    reqs = instances("loglikelihood", [("", "Pack my box"), ("Pack my", " colour")])
    cached = HFLM(pretrained=str(path), device="cpu", dtype="float32", max_length=MAX_LENGTH).loglikelihood(reqs)
    uncached = HFLM(pretrained=str(path), device="cpu", dtype="float32", max_length=MAX_LENGTH,
                    logits_cache=False).loglikelihood(reqs)
    ours = build_lm("transformer", None, "cpu", str(path), 8, max_length=MAX_LENGTH).loglikelihood(reqs)
    assert abs(cached[1][0] - uncached[1][0]) > 0.1
    assert max(abs(a[0] - b[0]) for a, b in zip(uncached, ours)) <= TOL


QUESTION = 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
TASK_FILES = {  # three tasks, one per request type, reading data files named relative to the YAML
    "parity_mc.yaml": "task: parity_mc\n" + QUESTION + "output_type: multiple_choice\ndoc_to_choice: choices\n"
                      "doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    "parity_rolling.yaml": "task: parity_rolling\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\n"
                           "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
                           "  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
    "parity_gen.yaml": "task: parity_gen\n" + QUESTION + "output_type: generate_until\n"
                       "doc_to_target: '{{choices[answer]}}'\ngeneration_kwargs:\n  until: ['\\n', '.']\n  max_gen_toks: 8\n"
                       "metric_list:\n  - metric: exact_match\n",
}
DOCS = [{"question": "what is two plus two?", "choices": [" four", " five", " blue"], "answer": 0,
         "text": "Pack my box with five dozen liquor jugs. " * k} for k in (1, 4)] + \
       [{"question": "what colour is the sky?", "choices": [" blue", " red", " Sphinx of black quartz"], "answer": 0,
         "text": CORPUS}, {"question": "How vexingly quick", "choices": [" daft zebras", " dog"], "answer": 1,
         "text": "Hello world!"}]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks")
    (path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: docs.jsonl\ntest_split: test\n"
    for name, text in TASK_FILES.items():
        (path / name).write_text(common + text)
    return path


TASKS = [name.removesuffix(".yaml") for name in TASK_FILES]


def hflm_metrics(path, batch_size: int, task_dir, monkeypatch) -> dict[tuple[str, str], float]:
    """(task, metric) -> value from lm-eval's own evaluator on HFLM, with plain lm-eval's task loading
    (which reads a relative data file against the working directory)."""
    monkeypatch.chdir(task_dir)
    manager = TaskManager(include_path=[str(task_dir)], include_defaults=False)
    results = evaluator.simple_evaluate(model=hflm(path, batch_size), tasks=TASKS, task_manager=manager)["results"]
    return {(task, key.split(",")[0]): value for task, metrics in results.items() for key, value in metrics.items()
            if key.endswith(",none") and "_stderr" not in key}


def assert_same_metrics(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("batch_size", [1, 8], ids=["bs1", "bs8"])
@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_task_metrics_match_hflm(checkpoints, task_dir, tmp_path, monkeypatch, convention, batch_size):
    path = checkpoints("transformer", convention)
    theirs = hflm_metrics(path, batch_size, task_dir, monkeypatch)
    monkeypatch.chdir(tmp_path)  # altbench reads the data file against the YAML's folder
    rows = run_eval("transformer", None, TASKS, "cpu", weights=str(path), batch_size=batch_size,
                    include_path=[str(task_dir)], max_length=MAX_LENGTH)
    assert_same_metrics({(r["task"], r["metric"]): r["value"] for r in rows}, theirs)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "transformer"])
def test_eval_command_metrics_match_hflm_per_architecture(checkpoints, task_dir, tmp_path, monkeypatch, arch):
    """`altbench eval --arch ARCH --weights DIR` against `lm_eval --model hf` on the same checkpoint."""
    from typer.testing import CliRunner

    from altbench.cli import app
    from altbench.runner import rundir

    path = checkpoints(arch, "adds-bos")
    theirs = hflm_metrics(path, 8, task_dir, monkeypatch)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", "--arch", arch, "--weights", str(path), "--tasks", ",".join(TASKS),
                                      "--include", str(task_dir), "--max-length", str(MAX_LENGTH), "--out", "runs"])
    assert result.exit_code == 0, result.output
    rows = rundir.read_rows(Path(result.output.strip().splitlines()[-1]))  # the command prints its run directory
    assert_same_metrics({(r["task"], r["metric"]): r["value"] for r in rows}, theirs)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_default_max_length_matches_hflm(checkpoints, arch):
    """Without --max-length, the context length comes from the checkpoint as in HFLM."""
    path = checkpoints(arch, "adds-bos")
    theirs = HFLM(pretrained=str(path), device="cpu", dtype="float32").max_length
    assert build_lm(arch, None, "cpu", str(path), 1).max_length == theirs
