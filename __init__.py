"""radixlm: structured generation on a radix-tree KV-cache runtime."""

from radixlm.runtime.engine import Engine
from radixlm.runtime.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams"]
__version__ = "0.1.0"
