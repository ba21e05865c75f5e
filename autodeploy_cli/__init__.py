"""ad: deploy a Hugging Face causal LM for fast inference, automatically.

Importing this package is cheap on purpose (`ad --help` must not import torch): `LLM` and `SamplingParams` are
loaded on first access.
"""

from typing import Any

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from autodeploy_cli.llm import LLM

        return LLM
    if name == "SamplingParams":
        from autodeploy_cli.runtime.request import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'autodeploy_cli' has no attribute {name!r}")
