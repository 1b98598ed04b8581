"""The lm-eval adapter against the models' own numbers: loglikelihood is the sum of the model's
token log-probabilities, rolling windows are lm-eval's disjoint windows (or, with carry_state, one
pass with the state carried), greedy generation stops where it should, and `run_eval` runs the
shipped local task offline while naming unknown tasks and missing datasets in one line."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from altbench import registry  # noqa: E402
from altbench.errors import UserError  # noqa: E402
from altbench.evaluation import run_eval  # noqa: E402
from altbench.evaluation.adapter import LOCAL_TASKS, AltbenchLM  # noqa: E402
from altbench.evaluation.tokenizer import ByteTokenizer  # noqa: E402
from conftest import assert_close  # noqa: E402

ARCHS = ["transformer", "mamba"]
TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. Again!"


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one thread each avoids oversubscription (10x slower otherwise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """datasets writes its cache here, not under ~/.cache/huggingface or the repository."""
    import datasets

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    return tmp_path


def tiny(arch):
    torch.manual_seed(0)
    return registry.build(arch, "tiny", dtype=torch.float32).eval()


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def own_logprobs(model, ids):
    """log P(ids[t + 1] | ids[: t + 1]) for every t, from one unpadded forward: (len(ids) - 1,)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor(ids)[None])
    logp = F.log_softmax(logits[0, :-1].double(), dim=-1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


class Counter(torch.nn.Module):
    """A contract-following stand-in whose greedy next token is always the previous byte + 1."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the adapter a device

    def _logits(self, ids):
        return 10.0 * F.one_hot((ids + 1) % 256, 256).float()

    def forward(self, ids, state=None):
        return self._logits(ids), None

    def step(self, tokens, state):
        return self._logits(tokens.reshape(-1)), None

    def state_bytes(self, batch, context, dtype=torch.bfloat16):
        return 0


@pytest.mark.parametrize("arch", ARCHS)
def test_loglikelihood_is_the_models_own_sum(arch):
    model, tok = tiny(arch), ByteTokenizer()
    pairs = [("Question: 2 + 2 =", " 4"), ("a", "bcdefgh"), ("Hello ", "world"), ("", "xyz"), ("Long " * 9, "tail")]
    lm = AltbenchLM(model, tok, batch_size=2)  # 5 requests of different lengths: padded batches
    got = lm.loglikelihood([request("loglikelihood", c, x) for c, x in pairs])
    for (ctx, cont), (ll, _) in zip(pairs, got):
        ctx_ids = tok.encode(ctx.rstrip()) or [tok.eos_token_id]  # trailing spaces join the continuation
        cont_ids = tok.encode(ctx[len(ctx.rstrip()):] + cont)
        expected = own_logprobs(model, ctx_ids + cont_ids)[-len(cont_ids):].sum()
        assert_close(f"{arch} {ctx!r}+{cont!r}", expected, torch.tensor(ll, dtype=torch.float64), 1e-5)


def test_is_greedy_flags_the_argmax_continuation():
    lm = AltbenchLM(Counter(), ByteTokenizer())
    got = lm.loglikelihood([request("loglikelihood", "a", "bcd"), request("loglikelihood", "a", "bce")])
    assert [greedy for _, greedy in got] == [True, False]


@pytest.mark.parametrize("arch", ARCHS)
def test_rolling_carry_state_equals_one_forward(arch):
    model, tok = tiny(arch), ByteTokenizer()
    tokens = tok.encode(TEXT)  # 92 tokens in windows of 16: five full windows and a partial one
    expected = own_logprobs(model, [tok.eos_token_id] + tokens).sum()
    lm = AltbenchLM(model, tok, max_length=16, carry_state=True)
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", TEXT)])
    assert_close(f"{arch} windows of 16 vs one forward", expected, torch.tensor(got, dtype=torch.float64), 1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_rolling_gives_lm_evals_disjoint_windows(arch):
    """By default each window of L tokens sees only itself plus the one token before it, whatever
    the model's state, as in lm-eval's HF backend."""
    model, tok = tiny(arch), ByteTokenizer()
    tokens = tok.encode(TEXT[:64])
    L = 16
    windows = [[tok.eos_token_id] + tokens[: L - 1]] + [tokens[k * L - 1 : (k + 1) * L - 1] for k in range(1, 4)]
    expected = sum(own_logprobs(model, w + [tokens[(k + 1) * L - 1]]).sum() for k, w in enumerate(windows))
    whole = own_logprobs(model, [tok.eos_token_id] + tokens).sum()
    lm = AltbenchLM(model, tok, max_length=L)
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", TEXT[:64])])
    assert_close(f"{arch} disjoint windows", expected, torch.tensor(got, dtype=torch.float64), 1e-5)
    assert abs(got - whole.item()) > 1e-3  # forgetting beyond the window changes the value
    one_window = AltbenchLM(model, tok, max_length=64)
    (unwindowed,) = one_window.loglikelihood_rolling([request("loglikelihood_rolling", TEXT[:64])])
    assert_close(f"{arch} one window", whole, torch.tensor(unwindowed, dtype=torch.float64), 1e-5)


@pytest.mark.parametrize(
    "context, kwargs, expected",
    [
        ("a", {"until": ["ef"], "max_gen_toks": 20}, "bcd"),
        ("a", {"until": "d", "max_gen_toks": 20}, "bc"),
        ("a", {"until": ["zz", "de", "cde"], "max_gen_toks": 20}, "bc"),  # cut at each stop in turn, as lm-eval
        ("a", {"until": ["zz"], "max_gen_toks": 5}, "bcdef"),
        (chr(0x7D), {"until": [], "max_gen_toks": 3}, "~\x7f" + "\ufffd"),  # bytes past ASCII decode with replacement
    ],
    ids=["list", "string", "in-turn", "max_gen_toks", "non-ascii"],
)
def test_generate_until_stops(context, kwargs, expected):
    (got,) = AltbenchLM(Counter(), ByteTokenizer()).generate_until([request("generate_until", context, kwargs)])
    assert got == expected


def test_generate_until_stops_at_end_of_text():
    lm = AltbenchLM(Counter(), ByteTokenizer())  # from byte 252 the counter reaches 0, end-of-text
    (got,) = lm.generate_until([request("generate_until", "", {"max_gen_toks": 20})])  # empty context: EOT first
    assert got == bytes(range(1, 21)).decode()
    (got,) = lm.generate_until([request("generate_until", "\u00fb", {"max_gen_toks": 100})])  # UTF-8 c3 bb
    assert got == bytes(range(0xBC, 0x100)).decode(errors="replace")


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_until_is_greedy_decoding_through_step(arch):
    model, tok = tiny(arch), ByteTokenizer()
    ids = tok.encode("Once upon a time")
    for _ in range(8):  # the reference: argmax of a full forward over everything so far
        with torch.no_grad():
            ids.append(model(torch.tensor(ids)[None])[0][0, -1].argmax().item())
    generated = ids[-8:]
    if tok.eos_token_id in generated:
        generated = generated[: generated.index(tok.eos_token_id)]
    (got,) = AltbenchLM(model, tok).generate_until([request("generate_until", "Once upon a time", {"max_gen_toks": 8})])
    assert got == tok.decode(generated)


def test_generation_budget_must_leave_room_for_context():
    lm = AltbenchLM(Counter(), ByteTokenizer(), max_length=16)
    with pytest.raises(UserError, match="asks for 16 generated tokens, not less than max_length 16"):
        lm.generate_until([request("generate_until", "a", {"max_gen_toks": 16})])


def test_prefix_token_outside_the_vocabulary_is_a_user_error():
    from altbench.evaluation.adapter import build_lm

    with pytest.raises(UserError, match="prefix token id 256 is outside the vocabulary of 256 tokens"):
        build_lm("transformer", "tiny", "cpu", None, 1, prefix_token_id=256)


def test_run_eval_on_the_local_task(hf_home, monkeypatch):
    monkeypatch.chdir(hf_home)  # data_files resolve against the YAML's folder, not the working directory
    rows = run_eval("mamba", "tiny", ["altbench_tiny_mc"], "cpu", weights=None, limit=None, batch_size=4)
    assert [(r["task"], r["metric"]) for r in rows] == [("altbench_tiny_mc", "acc")]
    (row,) = rows
    # the same accuracy from the adapter directly: argmax over choices of loglikelihood(prompt, " choice")
    docs = [json.loads(line) for line in (LOCAL_TASKS / "altbench_tiny_mc.jsonl").read_text().splitlines()]
    lm = AltbenchLM(tiny("mamba"), ByteTokenizer())
    hits = 0
    for doc in docs:
        prompt = f"Question: {doc['question']}\nAnswer:"
        lls = [ll for ll, _ in lm.loglikelihood([request("loglikelihood", prompt, " " + c) for c in doc["choices"]])]
        hits += max(range(len(lls)), key=lls.__getitem__) == doc["answer"]
    p, n = hits / len(docs), len(docs)
    assert row["value"] == pytest.approx(p)
    assert row["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))  # lm-eval's sample standard error


def test_unknown_task_is_a_user_error(hf_home):
    with pytest.raises(UserError, match="unknown task 'no_such_task_xyz'"):
        run_eval("transformer", "tiny", ["no_such_task_xyz"], "cpu", weights=None, limit=2, batch_size=2)


def test_task_without_its_dataset_is_a_user_error(hf_home):
    """A task whose dataset is on the Hub (offline here) fails with the one-line hint."""
    (hf_home / "tasks").mkdir()
    (hf_home / "tasks" / "hub_only.yaml").write_text(
        "task: hub_only\ndataset_path: altbench-tests/no-such-dataset\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: 0\n"
    )
    with pytest.raises(UserError, match="task hub_only needs its dataset; set HF_DATASETS_CACHE"):
        run_eval("transformer", "tiny", ["hub_only"], "cpu", limit=2, batch_size=2,
                 include_path=[str(hf_home / "tasks")])


def test_shipped_task_reads_its_data_from_any_directory_through_plain_lm_eval(hf_home, monkeypatch):
    """lm-eval's own TaskManager (as `lm_eval --include_path`) reads a `data_files` path against the
    working directory; the shipped task's loader reads it against the task's folder."""
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(hf_home)
    manager = TaskManager(include_path=[str(LOCAL_TASKS)], include_defaults=False)
    (task,) = manager.load(["altbench_tiny_mc"])["tasks"].values()
    assert len(list(task.eval_docs)) == 10
