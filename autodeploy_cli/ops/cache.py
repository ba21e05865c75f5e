"""The cache interface: the batch (SequenceInfo) plus every cache and buffer the cached graph takes as inputs.

It owns the KV page pool (per-layer tensors `[num_pages, *page_shape]`) and, for stateful token mixers, per-sequence
state slots (per-layer tensors `[num_slots, *slot_shape]`, one slot per running sequence). Transforms register
caches while building (`add_cache`, `add_state`, `add_buffer`); `allocate` creates them; the runtime calls
`forward` once per step. Graph inputs are passed in `input_names` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from autodeploy_cli.config.schema import effective_mamba_ssm_cache_dtype, effective_max_num_tokens
from autodeploy_cli.errors import ADError
from autodeploy_cli.ops.batch import SequenceInfo


@dataclass(frozen=True)
class CacheConfig:
    """Cache facts every backend may need (from the config, fixed for the life of the graph)."""

    dtype: torch.dtype  # KV dtype (kv_cache_config.dtype; "auto" = the model dtype)
    page_size: int  # tokens per page (attn_page_size)
    max_seq_len: int
    max_batch_size: int
    max_num_tokens: int
    # recurrent mixer states (SSM, delta rule): kv_cache_config.mamba_ssm_cache_dtype; None = the activations' dtype
    mamba_ssm_cache_dtype: Optional[torch.dtype] = None

    @property
    def max_pages_per_seq(self) -> int:
        return -(-self.max_seq_len // self.page_size)


@dataclass(frozen=True)
class CacheSpec:
    """A per-layer paged cache, allocated as [num_pages, *page_shape]."""

    page_shape: tuple[int, ...]  # e.g. (page_size, n_kv_heads, head_dim)
    dtype: torch.dtype


@dataclass(frozen=True)
class StateSpec:
    """A per-layer state cache with one slot per sequence, allocated as [num_slots, *slot_shape]."""

    slot_shape: tuple[int, ...]  # e.g. (n_heads, head_dim, state_dim) for an SSM state
    dtype: torch.dtype


class CachedSequenceInterface:
    """Sequence info + the caches, state slots and buffers the graph takes as inputs, in graph-input order."""

    def __init__(self, info: SequenceInfo, cache_config: CacheConfig):
        self.info = info
        self.cache_config = cache_config
        self.device = info.device
        self.input_names: list[str] = ["input_ids", "position_ids"]  # the graph's placeholders, in order
        self.cache_specs: dict[str, CacheSpec] = {}
        self.caches: dict[str, torch.Tensor] = {}
        self.state_specs: dict[str, StateSpec] = {}
        self.states: dict[str, torch.Tensor] = {}
        self.buffer_inits: dict[str, Callable[[torch.device], torch.Tensor]] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.num_pages = 0
        self.logits_gathered = False  # set by gather_logits_before_lm_head: logits come back as [1, G, vocab]

    @property
    def page_size(self) -> int:
        return self.info.page_size

    # --- registration (transforms) -------------------------------------------------------------------------------
    def add_input(self, name: str) -> None:
        if name not in self.input_names:
            self.input_names.append(name)

    def add_cache(self, name: str, spec: CacheSpec) -> None:
        self.cache_specs[name] = spec
        self.add_input(name)

    def add_state(self, name: str, spec: StateSpec) -> None:
        self.state_specs[name] = spec
        self.add_input(name)

    def add_buffer(self, name: str, init: Callable[[torch.device], torch.Tensor]) -> None:
        self.buffer_inits[name] = init
        self.add_input(name)

    # --- memory --------------------------------------------------------------------------------------------------
    def bytes_per_page(self) -> int:
        return sum(int(np.prod(s.page_shape)) * s.dtype.itemsize for s in self.cache_specs.values())

    def bytes_per_slot(self) -> int:
        return sum(int(np.prod(s.slot_shape)) * s.dtype.itemsize for s in self.state_specs.values())

    @property
    def num_slots(self) -> int:
        """State slots: one per sequence the batch can hold, plus the scratch slot (`info.pad_slot`) that the padded
        rows of a CUDA-graph batch write."""
        return self.info.max_batch_size + 1

    def state_bytes(self) -> int:
        """Bytes of every state slot of every layer (allocated once, beside the page pool)."""
        return self.num_slots * self.bytes_per_slot()

    def allocate(self, num_pages: int) -> None:
        """(Re)allocate every cache with `num_pages` pages, and the global buffers once."""
        self.caches.clear()  # drop the old pool before allocating the new one
        for name, spec in self.cache_specs.items():
            self.caches[name] = torch.zeros((num_pages, *spec.page_shape), dtype=spec.dtype, device=self.device)
        for name, spec in self.state_specs.items():
            if name not in self.states:
                self.states[name] = torch.zeros((self.num_slots, *spec.slot_shape), dtype=spec.dtype,
                                                device=self.device)
        for name, init in self.buffer_inits.items():
            if name not in self.buffers:
                self.buffers[name] = init(self.device)
        self.num_pages = num_pages

    def free(self) -> None:
        self.caches.clear()
        self.num_pages = 0

    @property
    def capacity_tokens(self) -> int:
        return self.num_pages * self.page_size

    # --- running -------------------------------------------------------------------------------------------------
    def graph_args(self) -> list[torch.Tensor]:
        out = []
        for name in self.input_names:
            if name in self.caches:
                out.append(self.caches[name])
            elif name in self.states:
                out.append(self.states[name])
            elif name in self.buffers:
                out.append(self.buffers[name])
            elif name in self.cache_specs or name in self.state_specs:
                raise RuntimeError(f"cache {name!r} is not allocated yet (initialize_cache has not run)")
            else:
                out.append(self.info.arg(name))
        return out

    def forward(self, model: Callable) -> torch.Tensor:
        """Run `model` on the current batch; returns logits [G, vocab] (one row per gathered token)."""
        logits = model(*self.graph_args())
        if self.logits_gathered:
            return logits.reshape(-1, logits.shape[-1])
        idx = self.info.arg("logits_gather_idx")
        return logits.reshape(-1, logits.shape[-1]).index_select(0, idx)

    def run_prefill(self, model: Callable, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                    gather: str = "all") -> torch.Tensor:
        """Prefill b sequences of s tokens through the cached graph: input_ids [b, s] -> logits [b, s, vocab]
        (gather="all") or [b, vocab] (gather="last").

        Used by `ad build --verify` and the memory probe. Sequences get consecutive pages; when the pool is not
        allocated yet (or too small) a temporary one is used and released afterwards.
        """
        b, s = input_ids.shape
        per_seq = -(-s // self.page_size)
        temporary = self.num_pages < b * per_seq
        if temporary:
            old = self.num_pages
            self.allocate(b * per_seq)
        try:
            pages = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(b)]
            pos = None if position_ids is None else position_ids.tolist()
            self.info.set_batch(input_ids.tolist(), [0] * b, pages, num_prefill=b, gather=gather, position_ids=pos)
            with torch.no_grad():
                logits = self.forward(model)
            return logits.reshape(b, s, -1) if gather == "all" else logits
        finally:
            if temporary:
                self.free() if old == 0 else self.allocate(old)


def make_interface(config: Any, device: torch.device, model_dtype: torch.dtype,
                   kv_dtype: Optional[str] = None, model_ssm_dtype: Any = None) -> CachedSequenceInterface:
    """The interface for an ADConfig: limits from max_batch_size / max_seq_len / max_num_tokens / attn_page_size.
    `kv_dtype` overrides kv_cache_config.dtype (the factory's choice: `auto` is fp8 for an FP8-KV checkpoint);
    model_ssm_dtype: the HF config's own `mamba_ssm_cache_dtype`, if any (what `auto` follows)."""
    kv = kv_dtype or config.kv_cache_config.dtype
    dtypes = {"auto": model_dtype, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
              "fp8": getattr(torch, "float8_e4m3fn", None)}
    kv_dtype = dtypes.get(kv)
    if kv_dtype is None:
        raise ADError(f"`kv_cache_config.dtype: {kv}` is not supported here; use auto, float32, float16 or bfloat16.")
    ssm = effective_mamba_ssm_cache_dtype(getattr(config.kv_cache_config, "mamba_ssm_cache_dtype", "auto"),
                                          model_ssm_dtype)
    if ssm not in ("auto", "float32"):
        raise ADError(f"`kv_cache_config.mamba_ssm_cache_dtype: {ssm}` is not supported; use auto (the model dtype) "
                      "or float32.")
    for key in ("max_batch_size", "max_seq_len", "attn_page_size"):
        if getattr(config, key) < 1:
            raise ADError(f"`{key}` must be at least 1, got {getattr(config, key)}.")
    max_num_tokens = effective_max_num_tokens(config.max_batch_size, config.max_seq_len, config.max_num_tokens)
    info = SequenceInfo(config.max_batch_size, config.max_seq_len, max_num_tokens, config.attn_page_size, device)
    cc = CacheConfig(dtype=kv_dtype, page_size=config.attn_page_size, max_seq_len=config.max_seq_len,
                     max_batch_size=config.max_batch_size, max_num_tokens=info.max_num_tokens,
                     mamba_ssm_cache_dtype=torch.float32 if ssm == "float32" else None)
    return CachedSequenceInterface(info, cc)
