"""kv_cache_config.dtype: the caches take the asked dtype, and fp8 caches work on CPU too."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.llm import build_engine
from autodeploy_cli.runtime.engine import SamplingParams


def _decode_logits(engine, prompt: list[int], steps: int) -> torch.Tensor:
    """Teacher-forced logits of `steps` decode steps after `prompt` (one sequence, pages 0..), through the cache."""
    iface, info = engine.iface, engine.iface.info
    pages = list(range(-(-(len(prompt) + steps) // info.page_size)))
    info.set_batch([prompt], [0], [pages], num_prefill=1)
    rows = [iface.forward(engine.model)[0]]
    for t in range(steps - 1):
        info.set_batch([[prompt[t % len(prompt)]]], [len(prompt) + t], [pages], num_prefill=0)
        rows.append(iface.forward(engine.model)[0])
    return torch.stack(rows).float()


def test_fp8_kv_cache_generates_on_cpu():
    base = ["max_seq_len=64", "max_batch_size=2", "attn_page_size=4"]
    engine = build_engine(resolve([], ["kv_cache_config.dtype=fp8", *base]))
    caches = list(engine.iface.caches.values())
    assert caches and all(c.dtype == torch.float8_e4m3fn for c in caches)
    out = engine.generate([[5, 6, 7, 8, 9]], SamplingParams(max_tokens=6, ignore_eos=True))
    assert out[0].error is None and len(out[0].token_ids) == 6
    # every step's logits within the fp8-KV verify bound of the float32-KV model's (garbage would be O(1) off)
    exact = build_engine(resolve([], ["kv_cache_config.dtype=float32", *base]))
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    with torch.no_grad():
        got, want = _decode_logits(engine, prompt, 6), _decode_logits(exact, prompt, 6)
    rel = (got - want).abs().max() / want.abs().max()
    assert 1e-4 < rel <= 0.1
