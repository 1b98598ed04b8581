"""lm-evaluation-harness on altbench models: the `AltbenchLM` adapter and `run_eval`.

lm-eval is an optional dependency (`pip install altbench[eval]`); it is imported only when used.
"""

from __future__ import annotations

from altbench.errors import UserError


def run_eval(arch: str, size: str | None, tasks: list[str], device: str, weights: str | None = None,
             limit: int | None = None, batch_size: int = 8, **kwargs) -> list[dict]:
    """Rows (task, metric, value, stderr) of `arch` on lm-eval `tasks`; see `adapter.run_eval`."""
    try:
        from altbench.evaluation import adapter
    except ImportError as err:
        if err.name == "yaml" or (err.name or "").startswith("lm_eval"):
            raise UserError("lm-eval 0.4.13 or a later 0.4.x is not installed; pip install 'altbench[eval]'") from err
        raise
    return adapter.run_eval(arch, size, tasks, device, weights, limit, batch_size, **kwargs)
