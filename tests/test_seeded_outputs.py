"""Behaviour unchanged: every architecture registered before the composition layer, built at `tiny`
from seed 0, has the same parameters (shapes and values, in registration order; names may follow the
shared `Block`'s) and gives the same logits as when `fixtures/seeded_outputs.pt` was recorded
(`python tests/test_seeded_outputs.py` re-records it)."""

import sys
from pathlib import Path

import pytest
import torch

from altbench import registry

FIXTURE = Path(__file__).parent / "fixtures" / "seeded_outputs.pt"
RECORDED = [
    "transformer", "mamba", "mamba-lti", "rwkv7", "hawk", "griffin", "xlstm", "retnet", "gla", "mamba2", "hyena",
]


def outputs(arch: str) -> dict:
    """Per-parameter sums (name -> (shape, sum)) and the fp32 logits of 13 fixed tokens, forward and step."""
    torch.manual_seed(0)
    model = registry.build(arch, "tiny", dtype=torch.float32).eval()
    x = torch.randint(0, model.config.vocab_size, (1, 13), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits, _ = model(x)
        state = model.init_state(1)
        for t in range(x.shape[1]):
            step, state = model.step(x[:, t], state)
    weights = {name: (tuple(p.shape), p.double().sum().item()) for name, p in model.state_dict().items()}
    return {"weights": weights, "logits": logits, "step": step}


@pytest.fixture(scope="module")
def recorded():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("arch", RECORDED)
def test_seeded_weights_and_logits_unchanged(arch, recorded):
    expected, got = recorded[arch], outputs(arch)
    assert list(got["weights"].values()) == list(expected["weights"].values())
    assert torch.equal(got["logits"], expected["logits"])
    assert torch.equal(got["step"], expected["step"])


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save({arch: outputs(arch) for arch in RECORDED}, FIXTURE)
    sys.exit(0)
