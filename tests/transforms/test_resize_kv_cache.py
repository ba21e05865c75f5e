"""resize_kv_cache: CPU pool = max_batch_size x max_seq_len; `max_tokens` caps it; GPU sizes it from free memory."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.registry import build_options
from transforms.resize_kv_cache import ResizeKvCache


def _build(tiny_dir, *extra):
    cfg = resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "dtype=float32", "attn_page_size=8",
                       "max_seq_len=64", "max_batch_size=2", *extra])
    return build(cfg, stop_after="resize_kv_cache")


def test_cpu_pool_and_cap(tiny_dir):
    result = _build(tiny_dir, "transforms.resize_kv_cache.max_tokens=20")
    iface = result.ctx.cache
    rec = result.records[-1]
    assert rec.num_matches == 1 and iface.num_pages == 3  # 20 tokens -> 3 pages of 8 (was 2 x 8 = 16)
    assert rec.note == "16 -> 3 pages (24 tokens, 0.000 GiB)"
    assert all(c.shape[0] == 3 for c in iface.caches.values())
    opts = build_options("resize_kv_cache", {"stage": "cache_init"})
    info = ResizeKvCache(opts).apply(result.model, result.ctx)  # no cap: back to the full CPU pool
    assert info.num_matches == 1 and iface.num_pages == 16
    again = ResizeKvCache(opts).apply(result.model, result.ctx)
    assert again.num_matches == 0  # already that size


def test_fraction_must_be_a_fraction(tiny_dir):
    result = _build(tiny_dir)
    opts = build_options("resize_kv_cache", {"stage": "cache_init", "free_gpu_memory_fraction": 1.5})
    with pytest.raises(ADError, match=r"must be within \[0, 1\], got 1.5"):
        ResizeKvCache(opts).apply(result.model, result.ctx)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pool_from_free_memory(tiny_dir):
    # a huge max_seq_len makes the full pool (4 x 2M tokens) larger than the memory share: memory decides
    result = _build(tiny_dir, "device=cuda", "max_seq_len=2097152", "max_batch_size=4", "max_num_tokens=256",
                    "kv_cache_config.free_gpu_memory_fraction=0.01")
    iface = result.ctx.cache
    full = 4 * (2097152 // 8)
    free, total = torch.cuda.mem_get_info()
    assert 0 < iface.num_pages < full
    pool = iface.num_pages * iface.bytes_per_page()
    assert pool < 0.02 * total  # about 1% of what was free
    ids = torch.randint(0, 320, (2, 9), device="cuda")
    logits = iface.run_prefill(result.model, ids, gather="last")
    assert logits.shape == (2, 320) and torch.isfinite(logits).all()
