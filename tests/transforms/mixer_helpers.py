"""Shared by the cached-mixer transform tests: a tiny hybrid built up to its weights, and the prefill check."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.pipeline.build import build


def built_until_weights(model_dir, *extra: str):
    """(build result stopped after load_weights, HF reference with the same weights)."""
    cfg = resolve([], [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32", "attn_page_size=4",
                       "max_seq_len=32", *extra])
    return build(cfg, stop_after="load_weights"), ModelFactory(cfg).materialize()


def prefill_matches_hf(result, hf, shapes=((2, 7), (1, 13))) -> None:
    """The graph's prefill through the cache interface (ctx.probe) == HF eager logits, on each shape."""
    for b, s in shapes:
        ids = torch.randint(0, 320, (b, s), generator=torch.Generator().manual_seed(s))
        pos = torch.arange(s).expand(b, s)
        got = result.ctx.probe(ids, pos)
        with torch.no_grad():
            want = hf(input_ids=ids, position_ids=pos).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
