"""Suites: TOML files that say what to measure, validated on load.

    name = "smoke"
    description = "..."
    archs = ["transformer", "mamba"]
    sizes = ["tiny"]
    backends = ["torch"]
    [arch_sizes]                         # per-architecture sizes where the names differ
    gla = ["340m"]
    dtypes = ["float32"]
    batches = [1]
    seq_lens = [64, 128, 256]
    device = "cpu"                       # default for `altbench run` (override with --device)

    [settings]                           # apply to every cell unless a measurement overrides them
    reps = 10                            # timed repetitions (at least; see min_time_s)
    warmup = 2                           # untimed calls before timing
    min_time_s = 0.0                     # keep repeating until this much time is timed
    budget_s = 0.0                       # >0: slow cells take fewer reps (never below 3)
    timeout_s = 120                      # per cell; the worker is killed after it
    prefill_segment = 0                  # >0: prefill in segments of this many tokens, carrying state
    decode_tokens = 16                   # tokens timed per decode cell
    cuda_graphs = true                   # replay decode steps (and short prefills) from CUDA graphs
    graph_max_len = 16384                # prefill / mixer-alone cells up to this length are graph-captured
    compile_decode = true                # torch.compile the decode step on a GPU (compile_ms apart)
    compile_prefill = false              # torch.compile prefill and mixer-alone calls (a compile per shape)
    compile_scope = "layer"              # what one compile covers: "layer" (each layer) or "model" (see below)
    energy = true                        # joules per token from NVML's energy counter on a GPU

    [measurements.prefill]               # one table per measurement; keys here override [settings]
    [measurements.decode]
    [measurements.train_step]
    max_seq_len = 16384                  # longer cells are recorded as skipped, with this reason
    [measurements.kernel]                # the first layer's sequence mixer alone (block.mix)
    [measurements.generate]              # G tokens after a prompt of L = seq_len tokens
    gen_length = 256                     # G
    steps = [64, 128, 256]               # denoising steps N (masked diffusion; one cell each)
    block_length = 32                    # semi-autoregressive blocks; divides gen_length, and steps
                                         # must be a multiple of gen_length / block_length
    remasking = "low_confidence"         # or "random"
    cfg_scale = 0.0                      # classifier-free guidance (0: none)
    [measurements.reasoning]             # cost of answering a puzzle of seq_len tokens
    cycles = [1, 2, 4]                   # iterative models (HRM): high-level cycles per segment (default: the size's)
    segments = [1, 4, 8]                 # and segments, at most the size's max_segments (default: max_segments)

Any measurement table may name `archs = [...]`: the measurement then runs for those architectures
only, and naming one that cannot do it (decode for a model without a causal step) is refused.
Without that list, a model that cannot do a measurement gets a 'not applicable' row.

`compile_scope` trades compile time for fusion (measure/fastpath.py): "layer" compiles one layer and
shares it among identical layers (seconds); "model" compiles the whole step or prefill as one graph
(about n_layers times longer, kept in inductor's cache), and inductor then fuses across layer
boundaries, which can save a kernel per layer in a decode step. "layer" is the default until a
measurement shows the whole-model compile worth its minutes (benchmarks/decode_profile.py --scopes
layer,model). The mixer-alone cell always compiles the mixer alone.

Any mistake (bad TOML, unknown key, wrong type, unknown architecture / size / backend /
measurement) raises `UserError` naming the file, the key and the fix.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from altbench import registry
from altbench.errors import UserError, one_line
from altbench.runner import rundir

MEASUREMENTS = ("prefill", "decode", "train_step", "kernel", "generate", "reasoning", "probe", "lm_eval")
REASONING_AXES = ("cycles", "segments")  # [measurements.reasoning] keys: positive integers or lists of them
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Settings:
    reps: int = 10
    warmup: int = 2
    min_time_s: float = 0.0
    budget_s: float = 0.0  # >0: fewer reps / no warm-up for cells slower than this allows (>= 3 reps)
    timeout_s: float = 300.0
    prefill_segment: int = 0
    decode_tokens: int = 16
    cuda_graphs: bool = True
    graph_max_len: int = 16384  # prefill / mixer-alone cells up to this length replay from a CUDA graph
    compile_decode: bool = True  # torch.compile the decode step (GPU only; compile time kept apart)
    compile_prefill: bool = False  # torch.compile prefill and mixer-alone calls too (one compile per shape)
    compile_scope: str = "layer"  # "layer" or "model": the regions one compile covers (measure/fastpath.py)
    energy: bool = True  # joules per token from NVML's energy counter (GPU only)
    max_seq_len: int = 0  # 0: no limit
    max_batch: int = 0  # 0: no limit


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    archs: list[str]
    sizes: list[str]
    backends: list[str]
    dtypes: list[str]
    batches: list[int]
    seq_lens: list[int]
    measurements: dict[str, Settings]
    description: str = ""
    device: str = "cpu"
    extra: dict = field(default_factory=dict)  # measurement-specific tables (probe tasks, lm-eval tasks)
    arch_sizes: dict = field(default_factory=dict)  # arch -> sizes, overriding `sizes` for that arch
    backend_choice: str = "each"  # "each": every backend its own cells; "first", "fastest": see `backends_of`
    measurement_archs: dict = field(default_factory=dict)  # measurement -> the archs it is restricted to

    def sizes_of(self, arch: str) -> list[str]:
        return self.arch_sizes.get(arch, self.sizes)

    def archs_of(self, measurement: str) -> list[str]:
        """The architectures `measurement` runs for: its table's `archs` (those still in the suite's,
        which `--archs` may narrow), else the suite's."""
        return [a for a in self.measurement_archs.get(measurement, self.archs) if a in self.archs]

    def backends_of(self, arch: str, measurement: str) -> list[str]:
        """The backends `arch` runs `measurement` on. "each": all of `backends` (one that does not
        implement the arch gives `skipped` rows). "first": only the first of `backends` that
        implements the arch, can run the measurement (a train step needs a backward) and is
        installed here, so each architecture is measured once, on its fastest listed form.
        "fastest": the same, in the order of `registry.FASTEST` (altbench's kernels, fla,
        mlstm_kernels, mamba_ssm, torch) rather than the order of `backends`."""
        if self.backend_choice == "each":
            return self.backends
        order = self.backends if self.backend_choice == "first" else [b for b in registry.FASTEST if b in self.backends]
        return first_usable(order, arch, measurement)


def first_usable(order: list[str], arch: str, measurement: str) -> list[str]:
    """[the first backend of `order` that implements `arch`, can run `measurement` (a train step needs
    a backward) and is installed]; else the first that implements it (its cells say what is missing),
    else the first of `order`."""
    usable = [b for b in order if (registry.trains_on(arch, b) if measurement == "train_step" else b in registry.backends_of(arch))]
    return next(([b] for b in usable if registry.backend_installed(b)), usable[:1] or order[:1])


_TOP = {
    "name": str, "description": str, "archs": list, "sizes": list, "backends": list, "dtypes": list,
    "batches": list, "seq_lens": list, "device": str, "settings": dict, "measurements": dict, "arch_sizes": dict,
    "backend_choice": str, "hybrids": dict,
}
BACKEND_CHOICES = ("each", "first", "fastest")
_SETTING_TYPES = {f.name: f.type for f in fields(Settings)}
_PY = {"int": int, "float": (int, float), "bool": bool, "str": str}
# The values each string setting may take.
_SETTING_CHOICES = {"compile_scope": ("layer", "model")}  # measure.fastpath.COMPILE_SCOPES, without importing torch
# The smallest value each numeric setting may take (the rest: at least 0).
_SETTING_MIN = {"reps": 1, "decode_tokens": 1, "timeout_s": 1e-3}


def suite_dir() -> Path:
    return Path(str(resources.files("altbench.suites")))


def known_suites() -> list[str]:
    return sorted(p.stem for p in suite_dir().glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A suite name from suites/ or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or rundir.is_file(path):
        if not rundir.is_file(path):
            raise UserError(f"suite file {path} does not exist")
        return path
    candidate = suite_dir() / f"{name_or_path}.toml"
    if not rundir.is_file(candidate):
        raise UserError(f"unknown suite '{name_or_path}'; known: {', '.join(known_suites())} (or give a path to a .toml)")
    return candidate


def _check_type(where: str, key: str, value, expected) -> None:
    ok = isinstance(value, expected) and not (expected in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        want = getattr(expected, "__name__", "number")
        raise UserError(f"{where}: key '{key}' must be {want}, got {type(value).__name__} {value!r}")


def _settings(where: str, table: dict, base: Settings) -> tuple[Settings, dict]:
    """Known setting keys -> Settings; other keys are returned for measurement-specific use."""
    known, rest = {}, {}
    for key, value in table.items():
        if key in _SETTING_TYPES:
            _check_type(where, key, value, _PY[_SETTING_TYPES[key]])
            least = _SETTING_MIN.get(key, 0)
            if isinstance(value, str):
                if value not in _SETTING_CHOICES[key]:
                    raise UserError(f"{where}: key '{key}' must be one of {', '.join(_SETTING_CHOICES[key])}, got {value!r}")
            elif not isinstance(value, bool) and not (math.isfinite(value) and value >= least):
                raise UserError(f"{where}: key '{key}' must be a finite number >= {least:g}, got {value!r}")
            known[key] = value
        else:
            rest[key] = value
    return Settings(**{**base.__dict__, **known}), rest


def _strings(where: str, key: str, values: list) -> list:
    """`values` when it is a list of distinct strings; UserError naming the key otherwise."""
    for v in values:
        if not isinstance(v, str):
            raise UserError(f"{where}: '{key}' must hold strings, got {type(v).__name__} {v!r}")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise UserError(f"{where}: '{key}' lists '{twice}' twice")
    return values


def _names(where: str, key: str, values: list, known: list[str]) -> list[str]:
    for v in _strings(where, key, values):
        if v not in known:
            raise UserError(f"{where}: unknown {key[:-1] if key.endswith('s') else key} '{v}' in '{key}'; known: {', '.join(known)}")
    return values


# [measurements.generate]'s own keys and their defaults (None: gen_length's value; steps: a list)
GENERATE_DEFAULTS = {"gen_length": 256, "steps": None, "block_length": None, "remasking": "low_confidence", "cfg_scale": 0.0}


def _generate_options(where: str, table: dict) -> dict:
    """The generate measurement's options, checked, with defaults filled in and `steps` a list."""
    from altbench.models import llada

    for key in table:
        if key not in GENERATE_DEFAULTS:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join([*_SETTING_TYPES, *GENERATE_DEFAULTS])}")
    opts = {**GENERATE_DEFAULTS, **table}
    for key in ("gen_length", "block_length"):
        opts[key] = opts["gen_length"] if opts[key] is None else opts[key]
        _check_type(where, key, opts[key], int)
    steps = [opts["gen_length"]] if opts["steps"] is None else opts["steps"]
    steps = steps if isinstance(steps, list) else [steps]
    for n in steps:
        _check_type(where, "steps", n, int)
    if not steps or len(set(steps)) != len(steps):
        raise UserError(f"{where}: key 'steps' must list distinct step counts, got {opts['steps']!r}")
    _check_type(where, "remasking", opts["remasking"], str)
    if opts["remasking"] not in llada.REMASKING:
        raise UserError(f"{where}: key 'remasking' must be one of {', '.join(llada.REMASKING)}, got {opts['remasking']!r}")
    _check_type(where, "cfg_scale", opts["cfg_scale"], (int, float))
    if not (math.isfinite(opts["cfg_scale"]) and opts["cfg_scale"] >= 0):
        raise UserError(f"{where}: key 'cfg_scale' must be a finite number >= 0, got {opts['cfg_scale']!r}")
    try:
        for n in steps:
            llada.unmask_schedule(opts["gen_length"], n, opts["block_length"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return {**opts, "steps": sorted(steps), "cfg_scale": float(opts["cfg_scale"])}


def _measurement_archs(where: str, measurement: str, value, archs: list[str]) -> list[str]:
    """A measurement's `archs`: a non-empty list of the suite's archs, each able to do the measurement."""
    from altbench.measure.scenarios import lacking

    _check_type(where, "archs", value, list)
    if not _strings(where, "archs", value):
        raise UserError(f"{where}: key 'archs' must name at least one architecture (leave it out for all)")
    for arch in value:
        if arch not in archs:
            raise UserError(f"{where}: '{arch}' in 'archs' is not in the suite's 'archs' ({', '.join(archs)})")
        if reason := lacking(registry.family(arch).MODEL.capabilities, measurement):
            raise UserError(f"{where}: {arch} cannot do {measurement} ({reason}); remove it from 'archs'")
    return value


def _reasoning_axes(where: str, table: dict, archs: list[str], sizes: list[str], arch_sizes: dict) -> dict:
    """`cycles` and `segments` as lists of integers >= 1, segments at most the max_segments of every
    iterative architecture (of `archs`, those the measurement runs for) and size; UserError naming the
    key and the fix otherwise."""
    from altbench.models.base import ITERATIVE

    axes = {}
    for key, value in table.items():
        if key not in REASONING_AXES:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join([*_SETTING_TYPES, 'archs', *REASONING_AXES])}")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"{where}: key '{key}' must hold integers >= 1, got {v!r}; give e.g. {key} = [1, 2, 4]")
        if not values or len(set(values)) != len(values):
            raise UserError(f"{where}: key '{key}' must list distinct values, got {value!r}")
        axes[key] = values
    for arch in archs:
        if ITERATIVE not in registry.family(arch).MODEL.capabilities:
            continue
        for size in arch_sizes.get(arch, sizes):
            most = registry.config(arch, size).max_segments
            over = [m for m in axes.get("segments", []) if m > most]
            if over:
                raise UserError(f"{where}: key 'segments' holds {over[0]}, more than {arch} {size}'s max_segments "
                                f"({most}); list segments <= {most}")
    return axes


def load(name_or_path: str) -> Suite:
    path = resolve(name_or_path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: invalid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"{where}: cannot read the suite: {e.strerror}") from None
    for key, value in data.items():
        if key not in _TOP:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join(_TOP)}")
        _check_type(where, key, value, _TOP[key])
    for key in ("archs", "seq_lens", "measurements"):
        if not data.get(key):
            raise UserError(f"{where}: key '{key}' is required and must not be empty")
    for key in ("sizes", "backends", "dtypes", "batches"):
        if key in data and not data[key]:
            raise UserError(f"{where}: key '{key}' must not be empty (leave it out for its default)")

    suite_name = data.get("name", path.stem)
    if suite_name.strip(".") == "" or len(suite_name) > 100 or suite_name != one_line(suite_name) \
            or any(c in suite_name for c in "/\\\0"):
        raise UserError(f"{where}: key 'name' names the run directories, so it must be one line of at most 100 "
                        f"characters, not '.' or '..', without '/' or '\\', got {suite_name!r}")
    registry.declare_hybrids(data.get("hybrids", {}), where)
    archs = _strings(where, "archs", data["archs"])
    for arch in archs:
        if arch not in registry.known() and "." not in arch:
            _names(where, "archs", [arch], registry.known())
    sizes = _strings(where, "sizes", data.get("sizes", ["tiny"]))
    arch_sizes = data.get("arch_sizes", {})
    for arch, value in arch_sizes.items():
        if arch not in archs:
            raise UserError(f"{where} [arch_sizes]: '{arch}' is not in 'archs' ({', '.join(archs)})")
        _check_type(f"{where} [arch_sizes]", arch, value, list)
        if not _strings(f"{where} [arch_sizes]", arch, value):
            raise UserError(f"{where} [arch_sizes]: '{arch}' must list at least one size")
    for arch in archs:
        for size in arch_sizes.get(arch, sizes):
            if size not in registry.size_names(arch):  # also imports plugins: a bad one fails here
                raise UserError(f"{where}: size '{size}' is not defined for {arch}; known: {', '.join(registry.size_names(arch))}")
    backend_choice = data.get("backend_choice", "each")
    default = list(registry.FASTEST) if backend_choice == "fastest" else ["torch"]
    backends = _names(where, "backends", data.get("backends", default), list(registry.BACKENDS))
    if backend_choice not in BACKEND_CHOICES:
        raise UserError(f"{where}: key 'backend_choice' must be one of {', '.join(BACKEND_CHOICES)}, got {backend_choice!r}")
    dtypes = _names(where, "dtypes", data.get("dtypes", ["float32"]), list(DTYPES))
    for key in ("batches", "seq_lens"):
        values = data.get(key, [])
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"{where}: '{key}' must hold positive integers, got {v!r}")
        if len(set(values)) != len(values):
            raise UserError(f"{where}: '{key}' lists a value twice")
    device = data.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise UserError(f"{where}: key 'device' must be 'cpu' or 'cuda', got {device!r}")

    base, stray = _settings(f"{where} [settings]", data.get("settings", {}), Settings())
    if stray:
        raise UserError(f"{where} [settings]: unknown key '{next(iter(stray))}'; known: {', '.join(_SETTING_TYPES)}")
    measurements, extra, measurement_archs = {}, {}, {}
    for name, table in data["measurements"].items():
        _names(where, "measurements", [name], list(MEASUREMENTS))
        if not isinstance(table, dict):
            raise UserError(f"{where}: [measurements.{name}] must be a table")
        table_where = f"{where} [measurements.{name}]"
        if "archs" in table:
            table = dict(table)
            measurement_archs[name] = _measurement_archs(table_where, name, table.pop("archs"), archs)
        measurements[name], extra[name] = _settings(table_where, table, base)
        if name == "generate":
            extra[name] = _generate_options(table_where, extra[name])
        elif name == "reasoning":
            extra[name] = _reasoning_axes(table_where, extra[name], measurement_archs.get(name, archs), sizes, arch_sizes)
        elif extra[name] and name not in ("probe", "lm_eval"):
            raise UserError(f"{table_where}: unknown key '{next(iter(extra[name]))}'; known: {', '.join([*_SETTING_TYPES, 'archs'])}")
    return Suite(
        name=suite_name, path=path, archs=archs, sizes=sizes, backends=backends, dtypes=dtypes,
        batches=data.get("batches", [1]), seq_lens=data["seq_lens"], measurements=measurements,
        description=data.get("description", ""), device=device, extra=extra, arch_sizes=arch_sizes,
        backend_choice=backend_choice, measurement_archs=measurement_archs,
    )
