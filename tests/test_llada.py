"""LLaDA (arXiv:2502.09992): attention without a causal mask, the 1/t-weighted masked diffusion loss,
the sampler (one token per step, most confident first, block by block, guidance), the Monte-Carlo
likelihood bound, and the `generate` measurement through the runner beside an autoregressive model."""

import math

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models.llada import masked_diffusion_loss, unmask_schedule
from altbench.runner import run as runner
from altbench.runner import suite as suites
from altbench.runner.cells import expand
from conftest import assert_close

MASK = 256  # the tiny size's mask token


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one thread each avoids oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny():
    torch.manual_seed(0)
    return registry.build("llada", "tiny", dtype=torch.float32).eval()


def test_every_position_sees_later_tokens():
    model = tiny()
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 256
    with torch.no_grad():
        before, after = model(ids)[0], model(changed)[0]
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-4  # position 0 reads position 7
    torch.manual_seed(0)
    causal = registry.build("transformer", "tiny").eval()
    with torch.no_grad():
        assert torch.equal(causal(ids)[0][0, :-1], causal(changed)[0][0, :-1])


def test_loss_weights_each_masked_token_by_one_over_t():
    # uniform logits over 4 tokens: every masked position costs log 4
    logits = torch.zeros(2, 4, 4)
    targets = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    masked = torch.tensor([[True, False, True, False], [False, False, False, True]])
    t = torch.tensor([[0.5], [0.2]])
    expected = (2 * math.log(4) / 0.5 + 1 * math.log(4) / 0.2) / 8
    assert masked_diffusion_loss(logits, targets, masked, t).item() == pytest.approx(expected, rel=1e-6)


def test_train_loss_of_a_uniform_predictor_is_log_v_in_expectation():
    """E[#masked / t] = T for every t: the 1/t weight makes the loss of a model that predicts uniformly
    log V per token (unweighted, it would be E[t] log V = log V / 2)."""
    model = tiny()
    torch.nn.init.zeros_(model.embed.weight)  # tied head: every logit 0
    ids = torch.randint(0, 256, (256, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = model.train_loss(ids, torch.Generator().manual_seed(3)).item()
    assert loss == pytest.approx(math.log(257), abs=0.5)
    again = model.train_loss(ids, torch.Generator().manual_seed(3)).item()
    assert again == loss


def test_train_step_measurement_minimises_the_models_own_loss():
    model = tiny().train()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))
    loss = model.train_loss(ids, torch.Generator().manual_seed(5))
    loss.backward()
    assert torch.isfinite(loss) and model.embed.weight.grad.abs().sum() > 0


def test_schedule_reveals_each_block_evenly_and_names_bad_keys():
    assert unmask_schedule(8, 8, 8) == [[1] * 8]
    assert unmask_schedule(8, 3, 8) == [[3, 3, 2]]
    assert unmask_schedule(16, 4, 8) == [[4, 4], [4, 4]]
    for args, key in [((8, 0, 8), "'steps' 0"), ((8, 9, 8), "'steps' 9"), ((8, 4, 3), "'block_length' 3"),
                      ((16, 3, 4), "'steps' 3 must be a multiple of the 4 blocks")]:
        with pytest.raises(UserError, match=key):
            unmask_schedule(*args)


class Rigged:
    """Stand-in mask predictor: position p predicts token 10 + p with logit score[p], whatever the input;
    records the sequence it sees at every call."""

    def __init__(self, score):
        self.score, self.seen = torch.tensor(score, dtype=torch.float32), []

    def __call__(self, ids, start=0, end=None):
        self.seen.append(ids.clone())
        T = ids.shape[1]
        logits = torch.zeros(ids.shape[0], T, 300)
        logits[:, torch.arange(T), 10 + torch.arange(T)] = self.score[:T]
        return logits[:, start:end]


def rigged(score):
    model = tiny()
    model.denoise = Rigged(score)
    return model


def revealed_order(seen, prompt_len):
    """The answer positions each call's input had revealed, as the order in which they appeared."""
    order, shown = [], set()
    for x in seen[1:] + [None]:
        if x is None:
            break
        now = {p for p in range(x.shape[1] - prompt_len) if x[0, prompt_len + p] != MASK}
        order += sorted(now - shown)
        shown = now
    return order


def test_one_token_per_step_most_confident_first_and_no_mask_left():
    prompt = torch.tensor([[1, 2]])
    score = [0, 0, 3.0, 5.0, 1.0, 4.0, 2.0, 6.0]  # answer positions 0..5 hold 3, 5, 1, 4, 2, 6
    model = rigged(score)
    out = model.generate(prompt, gen_length=6, steps=6, block_length=6)
    masks_seen = [int((x == MASK).sum()) for x in model.denoise.seen]
    assert masks_seen == [6, 5, 4, 3, 2, 1]  # one token revealed per step
    assert revealed_order(model.denoise.seen, 2) == [5, 1, 3, 0, 4]  # by confidence 6, 5, 4, 3, 2
    assert out[0].tolist() == [1, 2, 12, 13, 14, 15, 16, 17] and MASK not in out


def test_blocks_are_filled_left_to_right_whatever_the_confidence():
    prompt = torch.tensor([[1, 2]])
    score = [0, 0, 1.0, 2.0, 3.0, 9.0, 8.0, 7.0]  # the second block is the more confident
    model = rigged(score)
    out = model.generate(prompt, gen_length=6, steps=6, block_length=3)
    assert revealed_order(model.denoise.seen, 2) == [2, 1, 0, 3, 4]  # block 1 (most confident first), then block 2
    assert MASK not in out


def test_guidance_mixes_conditional_and_prompt_masked_predictions():
    model = tiny()
    x = torch.tensor([[5, 6, 7, MASK, MASK, MASK]])
    cond = model.denoise(x, 3, 6)
    uncond = model.denoise(torch.tensor([[MASK] * 6]), 3, 6)
    assert torch.equal(model._guided_logits(x, 3, 3, 6, 0.0), cond)
    assert_close("w=1.5", uncond + 2.5 * (cond - uncond), model._guided_logits(x, 3, 3, 6, 1.5), 1e-5)
    prompt = torch.tensor([[5, 6, 7]])
    plain = model.generate(prompt, 6, 6, 3)
    assert torch.equal(model.generate(prompt, 6, 6, 3, cfg_scale=0.0), plain)
    assert MASK not in model.generate(prompt, 6, 4, 3, cfg_scale=2.0)


def test_sampling_and_random_remasking_follow_the_generator():
    model, prompt = tiny(), torch.tensor([[5, 6, 7]])

    def sample(seed):
        return model.generate(prompt, 8, 4, 4, remasking="random", temperature=1.0, generator=torch.Generator().manual_seed(seed))

    first = sample(0)
    assert torch.equal(first, sample(0)) and not torch.equal(first, sample(1)) and MASK not in first


def test_mc_loglikelihood_is_a_seeded_finite_bound():
    model = tiny()
    ctx, cont = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7])
    est = model.loglikelihood(ctx, cont, 16, 4, torch.Generator().manual_seed(0))
    assert math.isfinite(est) and est < 0
    assert est == model.loglikelihood(ctx, cont, 16, 4, torch.Generator().manual_seed(0))
    assert est != model.loglikelihood(ctx, cont, 16, 4, torch.Generator().manual_seed(1))
    # one answer token: l = 1 always, so every draw is log p(token | context, M) exactly
    exact = model.denoise(torch.tensor([[1, 2, 3, 4, MASK]]), 4).log_softmax(-1)[0, 0, 5].item()
    assert model.loglikelihood(ctx, cont[:1], 5, 2, torch.Generator().manual_seed(0)) == pytest.approx(exact, rel=1e-5)
    # a uniform predictor: R/l x l x (-log V) = -R log V whatever l and the masked positions
    torch.nn.init.zeros_(model.embed.weight)
    assert model.loglikelihood(ctx, cont, 8, 8, torch.Generator().manual_seed(0)) == pytest.approx(-3 * math.log(257), rel=1e-6)


GENERATE_SUITE = """
archs = ["transformer", "llada"]
seq_lens = [8]
[settings]
reps = 3
warmup = 0
[measurements.generate]
gen_length = 4
steps = [2, 4]
block_length = 2
[measurements.decode]
"""


def test_generate_rows_for_llada_by_steps_and_one_autoregressive_row(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text(GENERATE_SUITE)
    run_dir, cells, done = runner.prepare(str(path), None, "cpu", tmp_path / "out")
    rows = {r["cell_id"]: r for r in runner.sweep(run_dir, cells, done)}
    llada2 = rows["generate/steps2/llada/tiny/torch/float32/cpu/b1/L8"]
    llada4 = rows["generate/steps4/llada/tiny/torch/float32/cpu/b1/L8"]
    ar = rows["generate/transformer/tiny/torch/float32/cpu/b1/L8"]
    for r in (llada2, llada4, ar):
        assert r["status"] == "ok", r
        assert r["gen_length"] == 4 and r["ms_median"] > 0 and r["tokens_per_s"] == pytest.approx(4e3 / r["ms_median"])
    model = registry.build("llada", "tiny", device="meta")
    assert (llada2["steps"], llada2["model_calls"], llada2["block_length"]) == (2, 2, 2)
    assert llada4["flops"] == 2 * llada2["flops"] == 4 * model.denoise_flops(12, 2)
    assert ar["model_calls"] == 4 and "steps" not in ar
    transformer = registry.build("transformer", "tiny", device="meta")
    assert ar["flops"] == transformer.prefill_flops(8) + sum(transformer.flops_per_token(8 + i) for i in range(3))
    na = rows["decode/llada/tiny/torch/float32/cpu/b1/L8"]
    assert (na["status"], na["message"]) == ("skipped", "not applicable (no causal step)")


@pytest.mark.parametrize("table, message", [
    ("[measurements.generate]\nsteps = 100\nblock_length = 32", r"'steps' 100 must be a multiple of the 8 blocks .* use e.g. 96"),
    ("[measurements.generate]\nremasking = \"lowest\"", r"key 'remasking' must be one of low_confidence, random"),
    ("[measurements.generate]\nsteps_per_block = 4", r"unknown key 'steps_per_block'; known: .*gen_length, steps, block_length"),
    ("[measurements.decode]\narchs = [\"mamba\"]", r"'mamba' in 'archs' is not in the suite's 'archs'"),
], ids=["steps-not-per-block", "remasking", "unknown-key", "arch-not-in-suite"])  # more in test_refusals.py
def test_bad_generate_settings_are_refused(tmp_path, table, message):
    path = tmp_path / "suite.toml"
    path.write_text(f'archs = ["transformer", "llada"]\nseq_lens = [8]\n{table}\n')
    with pytest.raises(UserError, match=message) as e:
        suites.load(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_measurement_restricted_to_archs_runs_for_those_only(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text('archs = ["transformer", "llada"]\nseq_lens = [8]\n[measurements.decode]\narchs = ["transformer"]\n'
                    '[measurements.prefill]\n')
    cells = expand(suites.load(str(path)), "cpu")
    assert sorted(c.cell_id.split("/")[0] + "/" + c.arch for c in cells) == [
        "decode/transformer", "prefill/llada", "prefill/transformer"]


def test_lm_eval_scores_llada_by_the_seeded_monte_carlo_bound():
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from altbench.evaluation.adapter import AltbenchLM, build_lm
    from altbench.evaluation.tokenizer import ByteTokenizer

    model = tiny()
    lm = AltbenchLM(model, ByteTokenizer(), batch_size=3, mc_samples=6, mc_seed=7)
    (ll, greedy), = lm.loglikelihood([Instance("loglikelihood", {}, ("Question: 2 + 2 =", " 4"), 0)])
    expected = model.loglikelihood(torch.tensor(list(b"Question: 2 + 2 =")), torch.tensor(list(b" 4")), 6, 3,
                                   torch.Generator().manual_seed(7))
    assert ll == expected and greedy is False
    with pytest.raises(UserError, match="carry_state: llada carries no state"):
        build_lm("llada", "tiny", "cpu", None, 2, carry_state=True)
    with pytest.raises(UserError, match="mc_samples must be a positive integer"):
        build_lm("llada", "tiny", "cpu", None, 2, mc_samples=0)


def test_generate_table_and_compare_put_autoregressive_rows_beside_every_n(tmp_path):
    from altbench.report.compare import compare
    from altbench.report.tables import generate_section

    base = {"measurement": "generate", "size": "130m", "backend": "torch", "dtype": "bfloat16", "device": "cuda",
            "batch": 1, "seq_len": 512, "gen_length": 256, "status": "ok", "reps": 10}
    rows = [
        {**base, "arch": "llada", "task": "steps64", "steps": 64, "block_length": 32, "ms_median": 200.0, "tokens_per_s": 1280.0},
        {**base, "arch": "llada", "task": "steps256", "status": "timeout"},
        {**base, "arch": "transformer", "ms_median": 100.0, "tokens_per_s": 2560.0},
    ]
    table = " ".join("\n".join(generate_section(rows)).split())  # cells without their padding
    assert "G = 256 tokens after a prompt of L tokens, against denoising steps N (block length 32)" in table
    assert "| model | L | N=64 | N=256 |" in table
    assert "| llada 130m | 512 | 200 ms, 1,280 tok/s | timeout |" in table
    assert "| transformer 130m (autoregressive: G calls at every N) | 512 | 100 ms, 2,560 tok/s | 100 ms, 2,560 tok/s |" in table
    compare([{**r, "run_id": "r"} for r in rows], ["llada", "transformer"], tmp_path)
    text = " ".join((tmp_path / "compare.md").read_text().split())
    assert "| steps64 | 512 | 200 | 100 | 0.500 |" in text and "| steps256 | 512 | timeout | 100 | – |" in text
