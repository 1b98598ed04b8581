"""An architecture plugin for failure-path tests: size 'tiny' works; the others misbehave inside
the worker exactly as named ('raise', 'kill' = SIGKILL itself, 'hang' = sleep past any timeout,
'oom' = an allocation failure), and `worker_facts`, a call that reports the worker's CPU threads and Triton autotune caching."""

import dataclasses
import os
import signal
import time

from altbench.models import transformer


@dataclasses.dataclass
class FaultyConfig(transformer.TransformerConfig):
    fault: str = ""


SIZES = {
    name: FaultyConfig(**dataclasses.asdict(transformer.SIZES["tiny"]), fault=name)
    for name in ("tiny", "raise", "kill", "hang", "oom")
}


class MODEL(transformer.Transformer):
    def forward(self, input_ids, state=None, last_only=False):
        fault = self.config.fault
        if fault == "raise":
            raise ValueError("injected failure")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
        if fault == "oom":
            raise MemoryError("injected out of memory")
        return super().forward(input_ids, state, last_only)


def worker_facts() -> dict:
    import torch

    return {"status": "ok", "threads": torch.get_num_threads(), "autotune_cache": os.environ.get("TRITON_CACHE_AUTOTUNING")}
