"""A cell is one measurement of one configuration; a suite expands into the product of its axes."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from altbench.runner.suite import Settings, Suite


@dataclass(frozen=True)
class Cell:
    arch: str
    size: str
    backend: str
    measurement: str
    dtype: str
    device: str
    batch: int
    seq_len: int
    settings: Settings
    extra: tuple = ()  # measurement-specific (key, value) pairs from the suite, e.g. probe tasks

    @property
    def cell_id(self) -> str:
        """Stable identity across resumes: every axis value, none of the settings."""
        return f"{self.measurement}/{self.arch}/{self.size}/{self.backend}/{self.dtype}/{self.device}/b{self.batch}/L{self.seq_len}"

    def identity(self) -> dict:
        """The row fields that say which cell a result belongs to."""
        d = asdict(self)
        del d["settings"], d["extra"]
        return {"cell_id": self.cell_id, **d}

    def skip_reason(self) -> str | None:
        """Why the suite itself excludes this cell (recorded as a `skipped` row), or None."""
        s = self.settings
        if s.max_seq_len and self.seq_len > s.max_seq_len:
            return f"suite limits {self.measurement} to seq_len <= {s.max_seq_len}"
        if s.max_batch and self.batch > s.max_batch:
            return f"suite limits {self.measurement} to batch <= {s.max_batch}"
        return None


def expand(suite: Suite, device: str) -> list[Cell]:
    """Every cell of the suite, ordered so that a sweep finishes one architecture's short lengths first."""
    cells = []
    for measurement, settings in suite.measurements.items():
        extra = tuple(sorted((k, repr(v)) for k, v in suite.extra.get(measurement, {}).items()))
        for arch in suite.archs:
            for size, backend, dtype, batch, seq_len in itertools.product(
                suite.sizes_of(arch), suite.backends, suite.dtypes, suite.batches, sorted(suite.seq_lens)
            ):
                cells.append(Cell(arch, size, backend, measurement, dtype, device, batch, seq_len, settings, extra))
    return cells
