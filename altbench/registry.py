"""Names users type -> the code behind them: architectures (with named sizes) and backends.

Architecture modules are imported lazily, so `altbench --help` stays fast and a broken optional
family cannot break the others. Each module defines `MODEL` (a `LanguageModel` subclass taking
its config) and `SIZES` (size name -> config).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import re
from types import ModuleType, SimpleNamespace

from altbench.errors import UserError

ARCHITECTURES: dict[str, str] = {
    "transformer": "altbench.models.transformer",
    "mamba": "altbench.models.mamba",
    "mamba-lti": "altbench.models.mamba_lti",
    "rwkv7": "altbench.models.rwkv7",
    "hawk": "altbench.models.hawk",
    "griffin": "altbench.models.griffin",
    "xlstm": "altbench.models.xlstm",
    "retnet": "altbench.models.retnet",
    "gla": "altbench.models.gla",
    "mamba2": "altbench.models.mamba2",
    "hyena": "altbench.models.hyena",
    "mixtral": "altbench.models.mixtral",
    "qwen2-moe": "altbench.models.qwen2_moe",
    "jamba": "altbench.models.jamba",
    "zamba2": "altbench.models.zamba2",
    "striped-hyena": "altbench.models.striped_hyena",
    "ttt-linear": "altbench.models.ttt_linear",
    "ttt-mlp": "altbench.models.ttt_mlp",
    "llada": "altbench.models.llada",
    "hrm": "altbench.models.hrm",
}

# backend -> (module that must be importable, what it is)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "altbench's PyTorch forms (reference, runs anywhere)"),
    "triton": ("triton", "altbench's Triton kernels"),
    "fla": ("fla", "flash-linear-attention kernels"),
    "mamba_ssm": ("mamba_ssm", "the official Mamba kernels"),
    "mlstm_kernels": ("mlstm_kernels", "NX-AI's official mLSTM kernels (xLSTM)"),
}
# backend_choice = "fastest": per architecture and measurement, the first of these that implements the
# mixer, can run the measurement and is installed. altbench's kernels lead where they exist: the forward
# measured ahead of fla's and mamba_ssm's (benchmarks/kernels.py); the plain torch forms come last.
FASTEST = ("triton", "fla", "mlstm_kernels", "mamba_ssm", "torch")


# Hybrids declared by the suite being run ([hybrids.NAME] tables, models/hybrid.py), as JSON
# {name: [spec, source]} in the environment, so that the worker processes it starts see them too.
HYBRIDS_ENV = "ALTBENCH_HYBRIDS"


def _hybrids() -> dict:
    return json.loads(os.environ.get(HYBRIDS_ENV, "{}"))


def declare_hybrids(tables: dict, source: str = "") -> None:
    """Make exactly these hybrids known (name -> declaration: pattern, letter = mixer, mlp), each checked
    now: a mistake is one line naming `source`, the table and the key."""
    from altbench.models import hybrid

    for name, spec in tables.items():
        where = f"{source} [hybrids.{name}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
            raise UserError(f"{where}: a hybrid's name is letters, digits, '-' and '_' (it names cells and files)")
        if name in ARCHITECTURES:
            raise UserError(f"{where}: '{name}' is a registered architecture; rename the hybrid")
        if not isinstance(spec, dict):
            raise UserError(f"{where} must be a table (pattern = \"MMAM\", M = \"mamba2\", ...)")
        hybrid.sizes(name, spec, source)
    if tables:
        os.environ[HYBRIDS_ENV] = json.dumps({name: [spec, source] for name, spec in tables.items()})
    else:
        os.environ.pop(HYBRIDS_ENV, None)


def known() -> list[str]:
    """Registered architectures and declared hybrids."""
    return [*ARCHITECTURES, *_hybrids()]


def family(arch: str) -> ModuleType | SimpleNamespace:
    """The module of a registered architecture, a declared hybrid (MODEL and SIZES), or a plugin given
    as an importable dotted path (e.g. `my_project.models.my_mixer`) that defines MODEL and SIZES."""
    if arch in ARCHITECTURES:
        return importlib.import_module(ARCHITECTURES[arch])
    hybrids = _hybrids()
    if arch in hybrids:
        from altbench.models import hybrid

        spec, source = hybrids[arch]
        return SimpleNamespace(MODEL=hybrid.Hybrid, SIZES=hybrid.sizes(arch, spec, source))
    if "." in arch:
        try:
            module = importlib.import_module(arch)
        except Exception as e:  # a missing module, a malformed name, or the plugin's own error
            raise UserError(f"architecture plugin '{arch}' cannot be imported ({e}); is it on PYTHONPATH?") from None
        if not (hasattr(module, "MODEL") and hasattr(module, "SIZES")):
            raise UserError(f"architecture plugin '{arch}' must define MODEL and SIZES (see altbench/models/mamba.py)")
        return module
    raise UserError(f"unknown architecture '{arch}'; known: {', '.join(known())} (or a plugin module path)")


def size_names(arch: str) -> list[str]:
    return list(family(arch).SIZES)


def config(arch: str, size: str, **overrides):
    """A fresh copy of the named size's config, with `overrides` applied."""
    sizes = family(arch).SIZES
    if size not in sizes:
        raise UserError(f"unknown size '{size}' for {arch}; known: {', '.join(sizes)}")
    return dataclasses.replace(copy.deepcopy(sizes[size]), **overrides)


def build(arch: str, size: str, device=None, dtype=None, backend: str = "torch", **overrides):
    """The model for `arch` at `size`, with random weights, on `device` in `dtype`, its mixer's op
    taken from `backend` (see `use_backend`)."""
    import torch

    model_cls = family(arch).MODEL
    with torch.device(device or "cpu"):
        model = model_cls(config(arch, size, **overrides))
    use_backend(model, arch, backend)
    return model.to(dtype=dtype) if dtype is not None else model


def backends_of(arch: str) -> list[str]:
    """Backends that implement `arch`'s mixer: torch always, others where the family's module maps
    them (`BACKENDS`: name -> function that swaps the model's op for that backend's)."""
    return ["torch", *getattr(family(arch), "BACKENDS", {})]


def trains_on(arch: str, backend: str) -> bool:
    """Whether `backend` implements `arch` with a backward (a family lists its forward-only backends
    in `FORWARD_ONLY`), so that a train step can run on it."""
    return backend in backends_of(arch) and backend not in getattr(family(arch), "FORWARD_ONLY", ())


def use_backend(model, arch: str, backend: str) -> None:
    if backend == "torch":
        return
    ops = getattr(family(arch), "BACKENDS", {})
    if backend not in ops:
        raise UserError(f"backend {backend} has no implementation of {arch}; {arch} runs on: {', '.join(backends_of(arch))}")
    ops[backend](model)


def param_count(arch: str, size: str) -> int:
    """Parameter count, from a model built on the meta device (no memory, no init)."""
    return build(arch, size, device="meta").params()


def param_counts(arch: str, size: str) -> tuple[int, int]:
    """(total, active) parameters, from one model built on the meta device; they differ for MoE."""
    model = build(arch, size, device="meta")
    return model.params(), model.active_params()


def backend_installed(name: str) -> bool:
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'; known: {', '.join(BACKENDS)}")
    return importlib.util.find_spec(BACKENDS[name][0]) is not None
