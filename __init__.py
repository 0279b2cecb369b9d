"""radixlm: structured generation on a radix-tree KV-cache runtime.

import radixlm as rl            # SGLang programs run after `import radixlm as sgl`
rl.set_default_backend(rl.Runtime(model_path))      # or rl.Runtime(rl.demo_model_path())
"""

from radixlm.demo_model import demo_model_path
from radixlm.lang import *  # noqa: F403 - the DSL is the package's public face
from radixlm.lang import __all__ as _lang_all
from radixlm.runtime.entrypoints.engine import Engine
from radixlm.runtime.layers.sampling import SamplingParams


def __getattr__(name: str):
    # backends load the runtime client and tokenizer; import them only when asked for
    if name in ("Runtime", "RuntimeEndpoint"):
        from radixlm.lang.backend import runtime

        return getattr(runtime, name)
    if name == "OpenAI":
        from radixlm.lang.backend.openai import OpenAI

        return OpenAI
    raise AttributeError(f"module 'radixlm' has no attribute {name!r}")


__all__ = ["Engine", "SamplingParams", "demo_model_path", "Runtime", "RuntimeEndpoint", "OpenAI", *_lang_all]
__version__ = "0.1.0"
