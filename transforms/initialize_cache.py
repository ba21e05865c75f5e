"""initialize_cache: allocate every cache the cache-insertion transforms registered (the KV page pool).

The graph does not change; its cache inputs get real tensors:
    %k_cache_0 : (unallocated)  ->  %k_cache_0 : num_pages x page_size x n_kv x head_dim (zeros, kv dtype)
    %ssm_state_0 : (unallocated)  ->  %ssm_state_0 : (max_batch_size + 1) x heads x head_dim x state (state slots)

Pool size: on CPU, max_batch_size x max_seq_len tokens (every sequence at full length; resize_kv_cache keeps it).
On GPU a first pool just big enough for one max_num_tokens forward; resize_kv_cache sizes the final pool from the
memory left after that forward.
"""

from __future__ import annotations

from torch import nn

from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register


def full_pool_pages(iface) -> int:
    """Pages for max_batch_size sequences of max_seq_len tokens each (more could never be used at once)."""
    info = iface.info
    return info.max_batch_size * info.max_pages_per_seq


def probe_pool_pages(iface) -> int:
    """Pages for one forward of max_num_tokens tokens split over as few sequences as possible."""
    info = iface.info
    return min(full_pool_pages(iface), -(-info.max_num_tokens // info.page_size) + info.max_batch_size)


@register("initialize_cache")
class InitializeCache(BaseTransform):
    def apply(self, gm: nn.Module, ctx: PassContext) -> TransformInfo:
        iface = ctx.cache
        if iface is None or not (iface.cache_specs or iface.state_specs):
            return TransformInfo.untouched("no caches registered")
        # without paged caches the pages are bookkeeping only (no tensors): the full pool costs nothing
        full = ctx.device.type == "cpu" or not iface.cache_specs
        pages = full_pool_pages(iface) if full else probe_pool_pages(iface)
        iface.allocate(pages)
        gib = pages * iface.bytes_per_page() / 2**30
        note = f"Initialized {len(iface.cache_specs)} caches: {pages} pages x {iface.page_size} tokens, {gib:.3f} GiB"
        if iface.state_specs:
            note += (f"; {len(iface.state_specs)} state caches: {iface.num_slots} slots, "
                     f"{iface.state_bytes() / 2**30:.3f} GiB")
        return TransformInfo(num_matches=len(iface.cache_specs) + len(iface.state_specs), is_clean=True,
                             has_valid_shapes=True, note=note)
