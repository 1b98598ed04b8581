"""Hugging Face checkpoints <-> altbench models, by state-dict mapping.

A family that has a transformers class defines, in its own module:

    HF_CLASS: str                              e.g. "MambaForCausalLM"
    to_hf_config(config) -> PretrainedConfig   the transformers config of the same model
    from_hf_config(d: dict) -> Config          config.json of a checkpoint -> altbench config
    HF_RENAMES: list[(regex, replacement)]     transformers parameter names -> altbench names

`load_pretrained` reads a local checkpoint directory (config.json + *.safetensors or *.bin), maps
names, and checks every shape before loading, so a mismatch is one line naming the tensor.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from altbench import registry
from altbench.errors import UserError
from altbench.models.moe import stack_experts


def rename(state_dict: dict[str, torch.Tensor], renames: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first matching (regex, replacement) rule to each name; unmatched names are kept."""
    out = {}
    for name, tensor in state_dict.items():
        for pattern, repl in renames:
            if re.fullmatch(pattern, name):
                name = re.sub(pattern, repl, name)
                break
        out[name] = tensor
    return out


def check_shapes(model: torch.nn.Module, shapes: dict[str, tuple], source: str) -> None:
    """One clear line for the first missing, unexpected or mis-shaped tensor of a checkpoint,
    given as name -> shape."""
    own = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.config, "tie_embeddings", False) else set()
    for name, tensor in own.items():
        if name not in shapes and name not in tied:
            raise UserError(f"{source}: tensor '{name}' is missing; is this checkpoint for this architecture?")
        if name in shapes and tuple(shapes[name]) != tuple(tensor.shape):
            raise UserError(
                f"{source}: tensor '{name}' has shape {tuple(shapes[name])}, the model expects "
                f"{tuple(tensor.shape)}; does the size match the checkpoint?"
            )
    unexpected = sorted(set(shapes) - set(own))
    if unexpected:
        raise UserError(f"{source}: unexpected tensor '{unexpected[0]}' (and {len(unexpected) - 1} more)")


def load_state_dict_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load after `check_shapes`."""
    check_shapes(model, {name: tuple(t.shape) for name, t in state_dict.items()}, source)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_embeddings", False) else set()
    model.load_state_dict(state_dict, strict=not tied)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        return {k: v for f in files for k, v in load_file(str(f)).items()}
    files = sorted(path.glob("pytorch_model*.bin"))
    if files:
        return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}
    raise UserError(f"{path}: no *.safetensors or pytorch_model*.bin files; point --weights at a checkpoint directory")


def from_hf(arch: str, hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names mapped, and per-expert MoE tensors of a published checkpoint stacked (models/moe.py)."""
    return stack_experts(rename(hf_state_dict, registry.family(arch).HF_RENAMES))


def load_pretrained(arch: str, path: str | Path, size: str | None = None):
    """The altbench model for a local Hugging Face checkpoint directory.

    With `size`, the checkpoint must match that named size (shapes are checked); without it the
    config comes from the checkpoint's config.json.
    """
    path = Path(path)
    fam = registry.family(arch)
    if not hasattr(fam, "HF_RENAMES"):
        raise UserError(f"{arch} has no Hugging Face mapping; --weights works for: {', '.join(hf_archs())}")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; point --weights at a local Hugging Face checkpoint directory")
    config = registry.config(arch, size) if size else fam.from_hf_config(json.loads((path / "config.json").read_text()))
    model = fam.MODEL(config)
    load_state_dict_into(model, from_hf(arch, read_checkpoint(path)), str(path))
    return model


def check_checkpoint(arch: str, path: str | Path, size: str) -> None:
    """Before a sweep: the checkpoint at `path` fits `arch` at `size` (shapes only, on the meta
    device, nothing loaded into memory) — or one line naming the first mismatching tensor."""
    path = Path(path)
    fam = registry.family(arch)
    if not hasattr(fam, "HF_RENAMES"):
        raise UserError(f"{arch} has no Hugging Face mapping; --weights works for: {', '.join(hf_archs())}")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        read_checkpoint(path)  # raises the one-line error for a directory without weights
        return  # .bin checkpoints are checked when loaded
    from safetensors import safe_open

    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            shapes.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    mapped = {name: tuple(t.shape) for name, t in from_hf(arch, meta).items()}
    check_shapes(registry.build(arch, size, device="meta"), mapped, str(path))


def hf_archs() -> list[str]:
    return [a for a in registry.ARCHITECTURES if hasattr(registry.family(a), "HF_RENAMES")]
