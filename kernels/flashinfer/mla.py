"""FlashInfer MLA: one planner per process, planned once per step (not once per layer).

Two wrappers (flashinfer >= 0.6):
  * `BatchMLAPagedAttentionWrapper` for decode and chunked prefill, on the absorbed weights:
        plan(qo_indptr, kv_indptr, kv_indices, kv_len_arr, num_heads, head_dim_ckv, head_dim_kpe, page_size,
             causal, sm_scale, q_data_type, kv_data_type)
        run(q_nope [T, n, R], q_pe [T, n, P], ckv_cache [pages, page, R], kpe_cache [pages, page, P]) -> [T, n, R]
  * `BatchPrefillWithRaggedKVCacheWrapper` for fresh prompts (nothing cached yet), on K/V expanded by kv_b_proj:
        plan(qo_indptr, kv_indptr, n, n, nope + rope, head_dim_vo=v, causal=True, ...); run(q, k, v) -> [T, n, v]

The step's host page table reaches the planner once per step (`plan_step`, from the metadata op, or from the
CUDA-graph runner's pre-replay hook, where nothing inside the graph may plan); each constant set (heads, dims,
scale, dtypes) is planned by the first layer that needs it and reused by the others. CUDA-graph decode uses a
fixed-buffer paged wrapper per captured batch size, re-planned before every replay. `flashinfer` is imported
lazily: this module imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

_WORKSPACE_BYTES = 128 * 1024 * 1024
HEAD_DIMS = (512, 64)  # (kv_lora_rank, rope dim) FlashInfer's MLA kernels are built for (DeepSeek-V2/V3, Kimi)


@dataclass
class MLAStepMeta:
    """Host copies of this step's batch layout (int32, CPU) plus the device page list."""

    qo_indptr: torch.Tensor  # [B+1] cu_seqlen
    kv_indptr: torch.Tensor  # [B+1] cu_num_pages
    kv_len: torch.Tensor  # [B] seq_len_with_cache
    kv_indices: torch.Tensor  # [P] device cache_loc
    fresh: bool  # nothing cached before this step: ragged prefill on the new tokens' expanded K/V
    batch: int


@dataclass
class _Planner:
    workspace: Optional[torch.Tensor] = None
    paged: object = None
    ragged: object = None
    graph_paged: dict = field(default_factory=dict)  # (batch, key, max pages) -> paged wrapper with fixed buffers
    meta: Optional[MLAStepMeta] = None
    planned: dict = field(default_factory=dict)  # key -> wrapper planned for the current step
    capturing_batch: Optional[int] = None

    def _ws(self, device) -> torch.Tensor:
        if self.workspace is None:
            self.workspace = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return self.workspace

    def wrapper(self, key: tuple, device):
        """The wrapper `key` plans into: one ragged and one paged wrapper for eager steps; for CUDA graphs one
        fixed-buffer paged wrapper per (batch, key, page-list capacity), so graphs of different engines or
        constant sets never share (or outgrow) a plan's buffers."""
        import flashinfer

        if key[0] == "ragged":
            if self.ragged is None:
                self.ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(self._ws(device), "NHD")
            return self.ragged
        bs = self.capturing_batch
        if bs is None:
            if self.paged is None:
                self.paged = flashinfer.mla.BatchMLAPagedAttentionWrapper(self._ws(device))
            return self.paged
        max_pages = max(self.meta.kv_indices.shape[0], 1)
        slot = (bs, key, max_pages)
        if slot not in self.graph_paged:
            i32 = dict(dtype=torch.int32, device=device)
            self.graph_paged[slot] = flashinfer.mla.BatchMLAPagedAttentionWrapper(
                self._ws(device), use_cuda_graph=True, qo_indptr=torch.zeros(bs + 1, **i32),
                kv_indptr=torch.zeros(bs + 1, **i32), kv_indices=torch.zeros(max_pages, **i32),
                kv_len_arr=torch.zeros(bs, **i32))
        return self.graph_paged[slot]


PLANNER = _Planner()
CAPTURED_KEYS: dict = {}  # graph batch size -> keys its captured layers planned (re-planned per replay)


def available() -> bool:
    try:
        import flashinfer  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return torch.cuda.is_available()


def step_meta(cu_seqlen_host: torch.Tensor, cu_num_pages_host: torch.Tensor, seq_len_with_cache_host: torch.Tensor,
              cache_loc: torch.Tensor) -> MLAStepMeta:
    # copies: FlashInfer's plan moves these to the device with non_blocking copies, and the runtime may refill the
    # pinned host buffer for the next step before the GPU has run them (overlapped steps); pageable copies are
    # copied synchronously
    qo = cu_seqlen_host.to(torch.int32, copy=True)
    kv_len = seq_len_with_cache_host.to(torch.int32, copy=True)
    fresh = int(kv_len.sum()) == int(qo[-1])
    return MLAStepMeta(qo_indptr=qo, kv_indptr=cu_num_pages_host.to(torch.int32, copy=True), kv_len=kv_len,
                       kv_indices=cache_loc, fresh=fresh, batch=qo.shape[0] - 1)


def plan_step(meta: MLAStepMeta, graph_batch: Optional[int] = None) -> None:
    """Record this step's layout; plans are (re)made lazily by the first layer of each constant set."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return  # planning copies to the device: never inside a capture (the warm-up run planned this batch)
    PLANNER.meta = meta
    PLANNER.capturing_batch = graph_batch
    PLANNER.planned = {}
    if graph_batch is not None:  # a capture's warm-up or a replay: the keys its layers plan are recorded afresh
        CAPTURED_KEYS[graph_batch] = set()


def replan_for_graph(meta: MLAStepMeta, graph_batch: int, keys: list) -> None:
    plan_step(meta, graph_batch)
    for key in keys:
        _plan(key)


def _plan(key: tuple):
    """key = (kind, heads, dim_a, dim_b, page_size, q dtype, kv dtype, scale): paged dims (R, rope), ragged
    dims (nope + rope, v)."""
    kind, n, dim_a, dim_b, ps, dtype, kv_dtype, scale = key
    meta = PLANNER.meta
    w = PLANNER.wrapper(key, meta.kv_indices.device)
    if kind == "ragged":
        w.plan(meta.qo_indptr, meta.qo_indptr, n, n, dim_a, head_dim_vo=dim_b, causal=True, sm_scale=scale,
               q_data_type=dtype, kv_data_type=kv_dtype)
    else:
        w.plan(meta.qo_indptr, meta.kv_indptr, meta.kv_indices, meta.kv_len, n, dim_a, dim_b, ps, True, scale,
               dtype, kv_dtype)
    PLANNER.planned[key] = w
    if PLANNER.capturing_batch is not None:
        CAPTURED_KEYS.setdefault(PLANNER.capturing_batch, set()).add(key)
    return w


def used_keys() -> list:
    return list(PLANNER.planned)


def is_fresh() -> bool:
    return PLANNER.meta is not None and PLANNER.meta.fresh and PLANNER.capturing_batch is None


def paged_mla(q_lat: torch.Tensor, q_pe: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
              scale: float) -> torch.Tensor:
    """Absorbed MLA over the paged caches (already holding this step's rows): q_lat [T, n, R], q_pe [T, n, P]
    -> [T, n, R]."""
    key = ("paged", q_lat.shape[1], q_lat.shape[2], q_pe.shape[2], ckv_cache.shape[1], q_lat.dtype, ckv_cache.dtype,
           float(scale))
    w = PLANNER.planned.get(key) or _plan(key)
    return w.run(q_lat, q_pe, ckv_cache, kpe_cache)


def ragged_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Fresh prompts: q, k [T, n, nope + rope], v [T, n, v] (ragged by the step's qo_indptr) -> [T, n, v]."""
    key = ("ragged", q.shape[1], q.shape[2], v.shape[2], 0, q.dtype, k.dtype, float(scale))
    w = PLANNER.planned.get(key) or _plan(key)
    return w.run(q, k, v)
