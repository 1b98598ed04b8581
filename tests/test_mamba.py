"""Mamba's selective scan: the chunked parallel form and the step equal the paper's loop."""

import pytest
import torch

from altbench.models.mamba import selective_scan, selective_scan_ref, selective_scan_step
from conftest import assert_close


@pytest.mark.parametrize("T, chunk", [(37, 8), (16, 16), (5, 256)], ids=["T37-C8", "T16-C16", "T5-C256"])
def test_chunked_scan_and_step_equal_the_loop(T, chunk):
    g = torch.Generator().manual_seed(T)
    Bsz, Di, N = 2, 6, 4
    u, B, C = (torch.randn(Bsz, T, n, generator=g) for n in (Di, N, N))
    delta = torch.rand(Bsz, T, Di, generator=g)
    A, D, h0 = -torch.rand(Di, N, generator=g) * 3, torch.randn(Di, generator=g), torch.randn(Bsz, Di, N, generator=g)
    y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, D, h0)
    y, h = selective_scan(u, delta, A, B, C, D, h0, chunk_size=chunk)
    assert_close("chunked y", y_ref, y, 1e-5)
    assert_close("chunked h", h_ref, h, 1e-5)
    h, ys = h0, []
    for t in range(T):
        y_t, h = selective_scan_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], D, h)
        ys.append(y_t)
    assert_close("step y", y_ref, torch.stack(ys, 1), 1e-5)
    assert_close("step h", h_ref, h, 1e-5)


@pytest.mark.parametrize("arch, selective", [("mamba", True), ("mamba-lti", False)])
def test_mamba_lti_makes_delta_b_c_input_independent(arch, selective):
    from altbench import registry

    torch.manual_seed(0)
    mixer = registry.build(arch, "tiny").layers[0].mixer
    x1, x2 = torch.randn(2, 2, 5, mixer.d_inner).unbind(0)
    first, second = mixer._ssm_inputs(x1), mixer._ssm_inputs(x2)
    assert [tuple(t.shape) for t in first] == [(2, 5, mixer.d_inner), (2, 5, 8), (2, 5, 8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second)) is not selective


def test_predicted_memory_counts_the_scan_workspace_of_the_torch_scan_only():
    from altbench import registry
    from altbench.measure.scenarios import predicted_bytes
    from altbench.runner.cells import Cell
    from altbench.runner.suite import Settings

    cell = dict(arch="mamba", size="1.4b", measurement="decode", dtype="bfloat16", device="cuda", batch=256,
                seq_len=2048, settings=Settings(prefill_segment=256))
    torch_form = predicted_bytes(registry.build("mamba", "1.4b", device="meta"), Cell(backend="torch", **cell))
    kernel = predicted_bytes(registry.build("mamba", "1.4b", device="meta", backend="triton"), Cell(backend="triton", **cell))
    # 8 fp32 (256, 256, 4096, 16) tensors: 128 GiB that the Triton scan keeps in registers instead
    assert (torch_form - kernel) / 2**30 == 128.0 and kernel / 2**30 < 16
