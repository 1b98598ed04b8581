"""Synthetic capability probes (MQAR, copying, selective copying, induction heads) and the small
trainer that trains any registered architecture on them from scratch."""

from altbench.probes.tasks import TASKS
from altbench.probes.trainer import ProbeSettings, run_probe

__all__ = ["TASKS", "ProbeSettings", "run_probe"]
