"""Mixture-of-Experts MLP (models/moe.py): the grouped-GEMM form against the per-expert loop, with
gradients; the router's load statistics; parity of the MoE layer with transformers' Qwen2-MoE block
(fine-grained + gated shared expert); and Mixtral's published parameter counts."""

import dataclasses

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models.moe import MoE, MoEConfig, experts_grouped, experts_ref, load_stats
from conftest import assert_close


def routed_inputs(N, E, k, d, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g)
    idx = torch.rand(N, E, generator=g).topk(k, dim=-1).indices  # k distinct experts per token
    w = torch.rand(N, k, generator=g)
    gate_up = torch.randn(E, 2 * H, d, generator=g) * d**-0.5
    down = torch.randn(E, d, H, generator=g) * H**-0.5
    return x, idx, w, gate_up, down


@pytest.mark.parametrize("N, E, k, d, H", [(37, 8, 2, 64, 96), (5, 16, 4, 32, 16), (64, 4, 1, 16, 8)],
                         ids=["N37-E8-k2-d64-H96", "N5-E16-k4-d32-H16", "N64-E4-k1-d16-H8"])
def test_grouped_experts_equal_the_loop_with_gradients(N, E, k, d, H):
    inputs = routed_inputs(N, E, k, d, H)
    ref = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    grp = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    y_ref, y_grp = experts_ref(*ref), experts_grouped(*grp)
    assert_close("y", y_ref, y_grp, 1e-6)
    dy = torch.randn_like(y_ref)
    y_ref.backward(dy)
    y_grp.backward(dy)
    for name, a, b in zip(["x", "idx", "w", "gate_up", "down"], ref, grp):
        if a.is_floating_point():
            assert_close(f"d{name}", a.grad, b.grad, 1e-6)


def test_top_k_above_experts_is_one_line():
    with pytest.raises(UserError, match=r"top_k = 3 must be between 1 and n_experts = 2; lower top_k"):
        MoEConfig(d_model=8, d_expert=8, n_experts=2, top_k=3)


def test_load_stats_count_every_routed_slot():
    torch.manual_seed(0)
    model = registry.build("mixtral", "tiny")
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 9)))
    stats = load_stats(model)
    c = model.config
    assert sum(stats["tokens_per_expert"]) == 2 * 9 * c.top_k * c.n_layers
    assert stats["imbalance"] >= 1.0 and stats["dropped_tokens"] == 0
    assert sum(load_stats(model)["tokens_per_expert"]) == 0  # reset after reading
    assert load_stats(registry.build("transformer", "tiny")) is None


def test_moe_layer_matches_qwen2_moe_block():
    """Fine-grained experts, top-k weights not renormalised, a shared expert scaled by sigmoid(x w_g)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    hf_config = transformers.Qwen2MoeConfig(
        hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=4, norm_topk_prob=False,
        shared_expert_intermediate_size=96,
    )
    torch.manual_seed(0)
    theirs = Qwen2MoeSparseMoeBlock(hf_config).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ours = MoE(MoEConfig(64, 32, 8, 4, norm_topk=False, d_shared=96, shared_gate=True))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 13, 64)
    with torch.no_grad():
        assert_close("qwen2-moe", theirs(x), ours(x), 1e-6)
        ours.grouped = False
        assert_close("qwen2-moe loop", theirs(x), ours(x), 1e-6)


@pytest.mark.parametrize(
    "arch, size, total, active",
    [
        ("mixtral", "8x7b", 46.7e9, 12.9e9), ("mixtral", "8x22b", 141e9, 39e9), ("jamba", "v0.1", 51.6e9, 12.1e9),
        ("qwen2-moe", "a2.7b", 14.3e9, 2.7e9),
    ],
    ids=["mixtral-8x7b", "mixtral-8x22b", "jamba-v0.1", "qwen1.5-moe-a2.7b"],
)
def test_published_total_and_active_params(arch, size, total, active):
    """Counted on the meta device. Jiang et al. 2024 (sec. 2.1): Mixtral 8x7B 46.7B total, 12.9B active;
    Mixtral 8x22B 141B, 39B (its model card). Lieber et al. 2024: Jamba 52B total, 12B active
    (51.6B and 12.1B counted). Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B active (its name and model card)."""
    model = registry.build(arch, size, device="meta")
    assert model.params() == pytest.approx(total, rel=0.005)
    assert model.active_params() == pytest.approx(active, rel=0.005)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2-moe", "jamba"])
def test_saved_checkpoints_with_per_expert_tensors_load(arch, tmp_path):
    """transformers writes the published layout (one tensor per expert and projection; Mixtral's
    block_sparse_moe.experts.E.w1/w2/w3); loading stacks them and gives transformers' logits."""
    transformers = pytest.importorskip("transformers")
    from altbench.models import hf

    fam = registry.family(arch)
    torch.manual_seed(0)
    theirs = getattr(transformers, fam.HF_CLASS)(fam.to_hf_config(registry.config(arch, "tiny"))).eval()
    theirs.save_pretrained(tmp_path)
    hf.check_checkpoint(arch, tmp_path, "tiny")
    ours = hf.load_pretrained(arch, tmp_path, size="tiny").eval()
    x = torch.randint(0, 256, (1, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(arch, theirs(x).logits, ours(x)[0], 1e-5)


def test_checkpoint_with_another_expert_count_is_one_line(tmp_path):
    transformers = pytest.importorskip("transformers")
    from altbench.models import hf, mixtral

    config = registry.config("mixtral", "tiny", n_experts=8)
    transformers.MixtralForCausalLM(mixtral.to_hf_config(config)).save_pretrained(tmp_path)
    expected = r"tensor 'layers.0.mlp.gate.weight' has shape \(8, 64\), the model expects \(4, 64\)"
    with pytest.raises(UserError, match=expected):
        hf.check_checkpoint("mixtral", tmp_path, "tiny")
    with pytest.raises(UserError, match=expected):
        hf.load_pretrained("mixtral", tmp_path, size="tiny")


def test_a_cell_of_an_moe_model_carries_its_router_load():
    from altbench.runner.cells import Cell
    from altbench.runner.suite import Settings
    from altbench.runner.worker import measure_cell

    settings = Settings(reps=3, warmup=1, min_time_s=0.0, cuda_graphs=False)
    cell = Cell(arch="mixtral", size="tiny", backend="torch", measurement="prefill", dtype="float32", device="cpu",
                batch=2, seq_len=16, settings=settings)
    row = measure_cell(cell)
    c = registry.build("mixtral", "tiny", device="meta").config
    per_call = 2 * 16 * c.top_k * c.n_layers  # routed slots of one prefill
    routed = sum(row["tokens_per_expert"])
    assert row["status"] == "ok" and routed > 0 and routed % per_call == 0
    assert len(row["tokens_per_expert"]) == c.n_experts and row["imbalance"] >= 1.0 and row["dropped_tokens"] == 0
    assert "tokens_per_expert" not in measure_cell(dataclasses.replace(cell, arch="transformer"))
