"""resize_kv_cache: size the KV page pool for the run.

GPU: run one forward of max_num_tokens tokens, measure the free memory, and give the pool
`free_gpu_memory_fraction` of what is left after a reserve (the anchor's rule), capped at max_batch_size x
max_seq_len tokens (more pages could never be used at once). CPU: max_batch_size x max_seq_len tokens.
State slots of stateful mixers (SSM, conv, delta rule) are allocated before the probe, so the free memory it measures
already excludes them; a model with state slots only (pure Mamba2) keeps the full page count (pages without tensors).
`max_tokens` caps the pool (e.g. to test preemption). The graph does not change; the cache tensors are replaced:
    %k_cache_0 : 40 x 64 x 8 x 128  ->  %k_cache_0 : 2048 x 64 x 8 x 128
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from autodeploy_cli.errors import ADError
from autodeploy_cli.log import get_logger
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register
from transforms.initialize_cache import full_pool_pages

_RESERVE_BYTES = 1 << 30  # kept free on the GPU besides the fraction (allocator slack, CUDA graphs, sampling)


@dataclass
class ResizeKvCacheOptions(TransformOptions):
    # GPU: share (0..1] of the memory free after a probe forward the page pool may take; 0 keeps the first pool
    free_gpu_memory_fraction: float = 0.9
    max_tokens: Optional[int] = None  # upper bound of the pool in tokens (rounded up to whole pages); None: no cap


def _gpu_pages(iface, model, fraction: float) -> int:
    """Pages the memory left after a max_num_tokens forward allows (the pool's current pages included)."""
    info = iface.info
    b = -(-info.max_num_tokens // info.max_seq_len)
    s = info.max_num_tokens // b
    torch.cuda.synchronize()
    iface.run_prefill(model, torch.zeros(b, s, dtype=torch.long), gather="last")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # blocks our allocator caches (the probe's, earlier builds') are free for the pool too
    free, total = torch.cuda.mem_get_info(iface.device)
    reserve = max(_RESERVE_BYTES, int(0.05 * total))
    current = iface.num_pages * iface.bytes_per_page()
    budget = max(0, free - reserve) * fraction + current
    get_logger().info(f"free {free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB after a {b}x{s} probe forward; "
                      f"pool may take {budget / 2**30:.2f} GiB")
    return int(budget // iface.bytes_per_page())


def _same_on_every_rank(pages: int) -> int:
    """Rank 0 hands out page ids for all ranks: every rank's pool gets the smallest rank's page count."""
    from autodeploy_cli.distributed import groups

    if not groups.is_distributed():
        return pages
    import torch.distributed as dist

    t = torch.tensor([pages], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=groups.state().cpu_group)
    return int(t.item())


@register("resize_kv_cache")
class ResizeKvCache(BaseTransform):
    options_cls = ResizeKvCacheOptions

    def apply(self, gm: nn.Module, ctx: PassContext) -> TransformInfo:
        iface = ctx.cache
        if iface is None or not (iface.caches or iface.states):
            return TransformInfo.untouched("no allocated caches")
        if not iface.cache_specs:
            return TransformInfo.untouched(f"state slots only: {iface.state_bytes() / 2**30:.3f} GiB")
        frac = self.options.free_gpu_memory_fraction
        if not 0 <= frac <= 1:
            raise ADError(f"`kv_cache_config.free_gpu_memory_fraction` must be within [0, 1], got {frac}.")
        full = full_pool_pages(iface)
        if iface.device.type == "cuda":
            target = min(full, _gpu_pages(iface, ctx.model, frac)) if frac > 0 else iface.num_pages
        else:
            target = full
        if self.options.max_tokens is not None:
            target = min(target, -(-self.options.max_tokens // iface.page_size))
        target = _same_on_every_rank(target)
        if target < 1:
            raise ADError("No GPU memory is left for the KV cache. Lower `max_num_tokens`, `max_batch_size` or "
                          "`max_seq_len`, or raise `kv_cache_config.free_gpu_memory_fraction`.")
        before = iface.num_pages
        if target != before:
            iface.allocate(target)
            if iface.device.type == "cuda":
                torch.cuda.empty_cache()
        gib = target * iface.bytes_per_page() / 2**30
        note = f"{before} -> {target} pages ({target * iface.page_size} tokens, {gib:.3f} GiB)"
        if iface.states:
            note += f" + state slots {iface.state_bytes() / 2**30:.3f} GiB"
        return TransformInfo(num_matches=int(target != before), is_clean=True, has_valid_shapes=True, note=note)
