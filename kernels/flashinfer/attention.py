"""FlashInfer paged attention: one planner per process, planned once per step (not once per layer).

The wrappers need host copies of the page-table offsets to plan; the runtime hands them over once per step through
`plan_step` (from the metadata-preparation op, or from the CUDA-graph runner before a replay, where nothing inside
the graph may plan). Layers then only `run`. Layers with different constants (sliding window, soft cap, scale)
get their own plan, made lazily on the first layer that needs it and reused by the others.

FlashInfer runs half types only: float32 calls go to the Triton kernels (same math, exact in fp32).
`flashinfer` is imported lazily: this module imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

_WORKSPACE_BYTES = 128 * 1024 * 1024


def available() -> bool:
    try:
        import flashinfer  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return torch.cuda.is_available()


@dataclass
class StepMeta:
    """Host copies of this step's page table (int32, CPU) plus the device page list."""

    qo_indptr: torch.Tensor  # [B+1] cu_seqlen
    kv_indptr: torch.Tensor  # [B+1] cu_num_pages
    last_page_len: torch.Tensor  # [B]
    kv_indices: torch.Tensor  # [P] device cache_loc
    is_decode: bool  # every sequence has one new token
    batch: int


@dataclass
class _Planner:
    workspace: Optional[torch.Tensor] = None
    prefill: object = None
    decode: object = None
    graph_decode: dict = field(default_factory=dict)  # batch size -> wrapper with fixed buffers (CUDA graphs)
    meta: Optional[StepMeta] = None
    planned: dict = field(default_factory=dict)  # (kind, constants) -> wrapper planned for the current step
    capturing_batch: Optional[int] = None

    def _ws(self, device) -> torch.Tensor:
        if self.workspace is None:
            self.workspace = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return self.workspace

    def wrapper(self, decode: bool, device, graph_batch: Optional[int]):
        import flashinfer

        if not decode:
            if self.prefill is None:
                self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._ws(device), "NHD")
            return self.prefill
        if graph_batch is None:
            if self.decode is None:
                self.decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(self._ws(device), "NHD",
                                                                            use_tensor_cores=True)
            return self.decode
        if graph_batch not in self.graph_decode:
            max_pages = self.meta.kv_indices.shape[0] if self.meta is not None else 1
            i32 = dict(dtype=torch.int32, device=device)
            self.graph_decode[graph_batch] = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self._ws(device), "NHD", use_cuda_graph=True, use_tensor_cores=True,
                paged_kv_indptr_buffer=torch.zeros(graph_batch + 1, **i32),
                paged_kv_indices_buffer=torch.zeros(max(max_pages, 1), **i32),
                paged_kv_last_page_len_buffer=torch.zeros(graph_batch, **i32))
        return self.graph_decode[graph_batch]


PLANNER = _Planner()
CAPTURED_KEYS: dict = {}  # graph batch size -> constant sets its captured layers planned (re-planned per replay)


def plan_step(meta: StepMeta, graph_batch: Optional[int] = None) -> None:
    """Record this step's page table; plans are (re)made lazily by the first layer of each constant set.

    graph_batch: the captured batch size when the step replays a CUDA graph (fixed-buffer decode wrappers)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return  # planning copies to the device: never inside a capture (the warm-up run planned this batch)
    PLANNER.meta = meta
    PLANNER.capturing_batch = graph_batch
    PLANNER.planned = {}


def replan_for_graph(meta: StepMeta, graph_batch: int, keys: list) -> None:
    """Before a CUDA-graph replay: plan the graph's wrappers for every constant set the graph uses."""
    plan_step(meta, graph_batch)
    for key in keys:
        _plan(key)


def _plan(key):
    kind, n_heads, n_kv, d, ps, dtype, window, cap, scale, kv_dtype = key
    meta = PLANNER.meta
    w = PLANNER.wrapper(kind == "decode", meta.kv_indices.device, PLANNER.capturing_batch)
    common = dict(window_left=window - 1 if window else -1, logits_soft_cap=cap or None, sm_scale=scale,
                  q_data_type=dtype, kv_data_type=kv_dtype)
    if kind == "decode":
        w.plan(meta.kv_indptr, meta.kv_indices, meta.last_page_len, n_heads, n_kv, d, ps, **common)
    else:
        w.plan(meta.qo_indptr, meta.kv_indptr, meta.kv_indices, meta.last_page_len, n_heads, n_kv, d, ps,
               causal=True, **common)
    PLANNER.planned[key] = w
    if PLANNER.capturing_batch is not None:
        CAPTURED_KEYS.setdefault(PLANNER.capturing_batch, set()).add(key)
    return w


def used_keys() -> list:
    return list(PLANNER.planned)


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float,
              sliding_window: Optional[int], logit_cap: Optional[float], out: Optional[torch.Tensor] = None,
              k_scale: Optional[float] = None, v_scale: Optional[float] = None):
    """q [T, n, d] over the paged caches (already holding this step's k/v) with the step's plan -> [T, n, d].
    An FP8 cache (kv dtype float8_e4m3fn) is planned as such; k_scale / v_scale dequantize it."""
    meta = PLANNER.meta
    n_heads, d = q.shape[1], q.shape[2]
    kind = "decode" if meta.is_decode else "prefill"
    key = (kind, n_heads, k_cache.shape[2], d, k_cache.shape[1], q.dtype, int(sliding_window or 0),
           float(logit_cap or 0.0), float(scale), k_cache.dtype)
    w = PLANNER.planned.get(key) or _plan(key)
    if k_scale is None and v_scale is None:
        return w.run(q, (k_cache, v_cache), out=out)
    return w.run(q, (k_cache, v_cache), out=out, k_scale=k_scale, v_scale=v_scale)


def step_meta_from_host(cu_seqlen_host: torch.Tensor, cu_num_pages_host: torch.Tensor,
                        last_page_len_host: torch.Tensor, cache_loc: torch.Tensor, is_decode: bool) -> StepMeta:
    b = cu_seqlen_host.shape[0] - 1
    return StepMeta(qo_indptr=cu_seqlen_host.to(torch.int32), kv_indptr=cu_num_pages_host.to(torch.int32),
                    last_page_len=last_page_len_host.to(torch.int32), kv_indices=cache_loc, is_decode=is_decode,
                    batch=b)
