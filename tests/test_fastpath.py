"""The fast paths a timed call runs on (compiled regions, CUDA graphs), energy per token and roofline
bounds. Compilation on a CPU runs through dynamo with the `aot_eager` backend (no C++ toolchain), which
traces and replaces exactly what inductor would."""

import pytest
import torch

from altbench import registry
from altbench.measure import energy, fastpath, roofline
from altbench.measure.fastpath import CompileError, fast_call
from altbench.measure.scenarios import decode_state, rewinder
from altbench.runner.worker import _call, call_isolated
from conftest import assert_close


@pytest.fixture
def cpu_compile(monkeypatch):
    monkeypatch.setattr(fastpath, "COMPILE_BACKEND", "aot_eager")


@pytest.mark.parametrize("scope", ["layer", "model"])
@pytest.mark.parametrize("arch", ["transformer", "mamba2", "rwkv7"])
def test_compiled_decode_step_gives_the_eager_logits_and_repeats_the_same_step(arch, scope, cpu_compile):
    torch.manual_seed(0)
    model = registry.build(arch, "tiny").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    with torch.inference_mode():
        state = decode_state(model, ids, context=17, segment=0, headroom=8)
        lengths = [s.length for s in state if hasattr(s, "fill_random")]
        rewind = rewinder(state)

        expected, _ = model.step(ids[:, -1], state)
        rewind()
        fast = fast_call(lambda tokens, state: model.step(tokens, state), (ids[:, -1], state), torch.device("cpu"),
                         compile=fastpath.regions(model, "step", scope), graphs=True, rewind=rewind)
        assert fast.compiled and not fast.cuda_graphs and fast.compile_ms > 0  # no graphs on a CPU
        compiled = [model] if scope == "model" else list(model.layers)
        assert all(hasattr(m.step, "_torchdynamo_orig_callable") for m in compiled)
        assert (scope == "model") != hasattr(model.layers[0].step, "_torchdynamo_orig_callable")
        for _ in range(2):  # every call is the same step at the same context
            logits, _ = fast.call()
            assert_close(f"{arch} compiled step", expected, logits, 1e-5)
    assert [s.length for s in state if hasattr(s, "fill_random")] == lengths


def test_compile_scopes_are_the_settings_choices():
    from altbench.runner import suite

    assert suite._SETTING_CHOICES["compile_scope"] == fastpath.COMPILE_SCOPES
    with pytest.raises(ValueError, match="not one of"):
        fastpath.regions(registry.build("mamba", "tiny", device="meta"), "step", "block")


def test_a_compile_failure_is_an_error_row_with_the_compilers_first_line(monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("inductor: no kernel for this op\nlong details")

    monkeypatch.setattr(fastpath, "COMPILE_BACKEND", broken_backend)
    model = registry.build("mamba", "tiny").eval()
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    with pytest.raises(CompileError, match="torch.compile failed: .*no kernel for this op"):
        fast_call(model, (x,), torch.device("cpu"), compile=(list(model.layers), "forward"), graphs=False)
    row = _call(fast_call, (model, (x,), torch.device("cpu"), (list(model.layers), "forward"), False))
    assert row["status"] == "error", row
    assert row["message"] == "CompileError: torch.compile failed: RuntimeError: inductor: no kernel for this op"
    assert "long details" not in row["message"]


def test_energy_is_empty_with_a_reason_on_cpu_and_without_nvml(monkeypatch):
    out = energy.joules_per_token(lambda: None, torch.device("cpu"), 10, 1.0)
    assert out == {"joules_per_token": None, "energy_note": "no energy counter on CPU"}
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # import fails as if not installed
    assert energy.counter(torch.device("cuda")) == (None, "nvidia-ml-py is not installed")


def test_energy_per_token_from_the_counter(monkeypatch):
    ticks = iter(range(0, 10**9, 250))  # mJ: each read 250 mJ later than the one before
    monkeypatch.setattr(energy, "counter", lambda device: (lambda: next(ticks), ""))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    calls = []
    out = energy.joules_per_token(lambda: calls.append(1), torch.device("cuda"), tokens_per_call=100, call_ms=100.0)
    assert out["energy_calls"] == len(calls) == 6  # 0.5 s of 100 ms calls, plus one
    assert out["joules_per_token"] == pytest.approx(0.25 / (6 * 100))


def test_roofline_bounds_and_the_implementation_bound_label():
    row = {"status": "ok", "device": "cuda", "ms_median": 2.0, "flops": 4e11, "bytes_moved": 3e9}
    ceilings = {"matmul_bf16_tflops": 800.0, "copy_gbs": 4000.0}
    b = roofline.bounds(row, ceilings)
    assert b["compute_bound_ms"] == pytest.approx(0.5) and b["memory_bound_ms"] == pytest.approx(0.75)
    assert b["bound_ms"] == pytest.approx(0.75) and b["roofline_frac"] == pytest.approx(0.375)
    assert not roofline.is_implementation_bound(b)
    assert roofline.is_implementation_bound(roofline.bounds({**row, "ms_median": 4.0}, ceilings))
    assert roofline.bounds({**row, "device": "cpu"}, ceilings) == {}  # CPU rows claim no GPU bound
    assert roofline.bounds({**row, "status": "oom"}, ceilings) == {}
    assert roofline.bounds(row, None) == {}
    env = {"ceilings": {"copy_gbs": 1.0}, "resumes": [{"ceilings": ceilings}, {"hostname": "x"}]}
    assert roofline.run_ceilings(env) == ceilings


def capture_a_host_sync() -> dict:
    """In a worker: time a call that cannot be captured (it reads a value back to the host)."""
    x = torch.ones(4, device="cuda")
    try:
        fast = fast_call(lambda: x.sum().item(), (), torch.device("cuda"), compile=None, graphs=True)
    except RuntimeError as e:
        return {"status": "ok", "raised": str(e)}
    return {"status": "ok", "graphs": fast.cuda_graphs, "note": fast.note, "value": fast.call(),
            "random_after": torch.rand(3, device="cuda").shape[0]}


@pytest.mark.gpu
def test_a_graph_capture_failure_falls_back_to_eager_or_fails_the_cell_never_a_broken_context():
    out = call_isolated(capture_a_host_sync, (), timeout_s=120)  # a fresh process, as a cell has
    assert out["status"] == "ok", out
    if "raised" in out:  # the capture left CUDA unusable: the cell is an error row, not timed on it
        assert out["raised"].startswith("CUDA graph capture failed") and "unusable" in out["raised"]
    else:
        assert not out["graphs"] and out["note"].startswith("CUDA graph capture failed")
        assert out["value"] == 4.0 and out["random_after"] == 3


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["layer", "model"])
@pytest.mark.parametrize("arch", ["transformer", "mamba2"])
def test_compiled_graphed_decode_on_gpu_matches_eager(arch, scope):
    torch.manual_seed(0)
    model = registry.build(arch, "tiny", device="cuda").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 33), device="cuda")
    with torch.inference_mode():
        state = decode_state(model, ids, context=33, segment=0, headroom=8)
        rewind = rewinder(state)

        expected, _ = model.step(ids[:, -1], state)
        rewind()
        fast = fast_call(lambda tokens, state: model.step(tokens, state), (ids[:, -1], state), torch.device("cuda"),
                         compile=fastpath.regions(model, "step", scope), graphs=True, rewind=rewind)
        assert fast.compiled and fast.cuda_graphs, fast.note
        logits, _ = fast.call()
        assert_close(f"{arch} graphed step", expected, logits, 1e-4)
