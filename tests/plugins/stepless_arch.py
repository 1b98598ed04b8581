"""An architecture plugin without a causal step or carried state, for the "not applicable" path."""

from altbench.models import transformer
from altbench.models.base import BIDIRECTIONAL

SIZES = {"tiny": transformer.SIZES["tiny"]}


class MODEL(transformer.Transformer):
    capabilities = frozenset({BIDIRECTIONAL})
