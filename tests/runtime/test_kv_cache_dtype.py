"""kv_cache_config.dtype: the caches take the asked dtype, and fp8 caches work on CPU too."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.llm import build_engine
from autodeploy_cli.runtime.engine import SamplingParams


def test_fp8_kv_cache_generates_on_cpu():
    engine = build_engine(resolve([], ["kv_cache_config.dtype=fp8", "max_seq_len=64", "max_batch_size=2"]))
    caches = list(engine.iface.caches.values())
    assert caches and all(c.dtype == torch.float8_e4m3fn for c in caches)
    out = engine.generate([[5, 6, 7, 8, 9]], SamplingParams(max_tokens=6, ignore_eos=True))
    assert out[0].error is None and len(out[0].token_ids) == 6
    assert any(c.view(torch.uint8).any() for c in caches)  # something was written
