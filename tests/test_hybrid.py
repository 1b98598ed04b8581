"""Hybrids declared in a suite TOML ([hybrids.NAME]: pattern, letter = mixer, mlp): they build, keep
the model contract (step equals forward, state carries across segments), run in a smoke suite, and
a malformed declaration is one line naming the file, the key and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models.hybrid import MIXERS
from altbench.runner import rundir, suite as suites
from conftest import assert_close

SUITE = """
archs = ["my-hybrid"]
sizes = ["tiny"]
seq_lens = [16]
[settings]
reps = 3
warmup = 0
decode_tokens = 4
[measurements.prefill]
[measurements.decode]
[hybrids.my-hybrid]
{body}
"""
GOOD = 'pattern = "MMAM"\nM = "mamba2"\nA = "attention"\nmlp = "swiglu"'


@pytest.fixture(autouse=True)
def no_declared_hybrids(monkeypatch):
    monkeypatch.delenv(registry.HYBRIDS_ENV, raising=False)


def declare(tmp_path, body=GOOD):
    path = tmp_path / "hybrid.toml"
    path.write_text(SUITE.format(body=body))
    return path, suites.load(str(path))


def check_contract(model, name):
    x = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(x)
        state, parts = None, []
        for segment in x.split([8, 1, 10], dim=1):
            logits, state = model(segment, state)
            parts.append(logits)
        state, steps = model.init_state(2), []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state)
            steps.append(logits)
    assert_close(f"{name} segmented", full, torch.cat(parts, 1), 1e-5)
    assert_close(f"{name} step", full, torch.stack(steps, 1), 1e-5)


def test_declared_hybrid_builds_and_keeps_the_contract(tmp_path):
    declare(tmp_path)
    torch.manual_seed(0)
    model = registry.build("my-hybrid", "tiny", dtype=torch.float32).eval()
    assert [type(layer.mixer).__name__ for layer in model.layers] == ["Mamba2Mixer", "Mamba2Mixer", "Attention", "Mamba2Mixer"]
    check_contract(model, "my-hybrid")
    assert registry.param_count("my-hybrid", "130m") > 50e6


def test_every_mixer_composes(tmp_path):
    letters = "abcdefghijklmnop"[: len(MIXERS)]
    body = f'pattern = "{letters}"\nmlp = "geglu"\n' + "\n".join(f'{l} = "{m}"' for l, m in zip(letters, MIXERS))
    declare(tmp_path, body)
    torch.manual_seed(0)
    check_contract(registry.build("my-hybrid", "tiny", dtype=torch.float32).eval(), "all mixers")


def test_declared_hybrid_runs_in_a_suite(tmp_path):
    path, _ = declare(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "altbench", "run", "--suite", str(path), "--device", "cpu", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = rundir.read_rows(Path(result.stdout.strip().splitlines()[-1]))
    assert {(r["arch"], r["measurement"], r["status"]) for r in rows} == {
        ("my-hybrid", "prefill", "ok"), ("my-hybrid", "decode", "ok")
    }


@pytest.mark.parametrize(
    "body, message",
    [
        ('pattern = "MMXM"\nM = "mamba2"\nA = "attention"',
         r"hybrid.toml \[hybrids.my-hybrid\] pattern 'MMXM': unknown mixer letter 'X'; known letters: M, A$"),
        ('pattern = "MM"\nM = "mamba3"',
         r"hybrid.toml \[hybrids.my-hybrid\]: M = 'mamba3' is not a mixer; known mixers: attention, "),
        ('pattern = "MM"\nM = "mamba2"\nmlp = "moe2"',
         r"\[hybrids.my-hybrid\]: mlp = 'moe2' is unknown; known: swiglu, geglu, none"),
        ('M = "mamba2"', r"\[hybrids.my-hybrid\]: 'pattern' must be a string"),
        ('pattern = "MM"\nM = "mamba2"\nn_heads = 5', r"n_heads = 5 must divide d_model / 2 = 32"),
    ],
    ids=["unknown-letter", "unknown-mixer", "unknown-mlp", "no-pattern", "bad-heads"],
)
def test_malformed_hybrid_is_one_line(tmp_path, body, message):
    """The file, the table and the key, with the fix."""
    with pytest.raises(UserError, match=message) as e:
        declare(tmp_path, body)
    assert "\n" not in str(e.value)
