"""radixlm's demo model: a small Llama trained here, from text that ships with Python and
synthetic conversations, shipped in `weights/` so the demo, the examples and the accuracy tests
have a model that does real work offline. `train.py` makes it; `evaluate.py` measures it."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"


def demo_model_path() -> str:
    """The folder of the trained demo model that ships with radixlm (a Hugging Face folder)."""
    if not (WEIGHTS / "config.json").exists():
        raise FileNotFoundError(
            f"the demo model is missing from {WEIGHTS}; reinstall radixlm, or train it with "
            "`python -m radixlm.demo_model.train --out <folder>` and pass --model <folder>"
        )
    return str(WEIGHTS)
