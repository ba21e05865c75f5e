"""Attention backends: how a canonical `auto_deploy::torch_attention` node becomes a cached (paged) attention call.

A backend is an `AttentionDescriptor` registered by name. `insert_cached_attention` reads only this interface; the
kernels behind it live in `kernels/<backend>/` and are imported lazily, by module path (the table in
`autodeploy_cli/ops/backends.py`), the first time a backend is asked for. So transforms never import a kernel module, and `kernels.triton` is never imported on a CPU machine.

What the transform builds for every attention node, in this argument order:

    cached_op(q, k, v,                       # [1, T, n, d], [1, T, n_kv, d], [1, T, n_kv, d_v] (layout bsnd)
              *metadata_fields,              # sequence-info tensors (graph inputs, shared by all layers)
              *prepare_metadata outputs,     # one node per graph, right after the inputs
              *caches,                       # this layer's caches, e.g. k_cache_3, v_cache_3 (graph inputs)
              *global_buffers,               # shared by all layers, e.g. a workspace (graph inputs)
              *constants,                    # python constants from the source node (scale, sinks, window, cap)
              **constant_kwargs)             # optional ones only when set (alibi_slopes=...), by name
        -> out [1, T, n, d_v]

KV cache layout shared by every backend: per layer k_cache and v_cache of shape [num_pages, page_size, n_kv, head_dim]
(NHD pages). Two sequences never share a page; `cache_loc` lists each sequence's pages (ragged, `cu_num_pages`).
The sequence-info fields are documented in `autodeploy_cli.ops.batch.FIELDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch

from autodeploy_cli.errors import ADError
from autodeploy_cli.ops.cache import CacheConfig, CacheSpec

_REGISTRY: dict[str, type["AttentionDescriptor"]] = {}


@dataclass(frozen=True)
class AttentionNodeInfo:
    """What `insert_cached_attention` read from one canonical attention node."""

    layer_idx: int  # 0, 1, ... in graph order (names the caches: k_cache_<layer_idx>)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    v_head_dim: int
    dtype: torch.dtype  # dtype of q (the activations)
    scale: Optional[float]
    sinks: Any  # an fx.Node holding [n_heads] sink logits, or None
    sliding_window: Optional[int]
    logit_cap: Optional[float]
    alibi_slopes: Any = None  # an fx.Node holding [n_heads] float32 ALiBi slopes, or None
    # FP8 KV cache only: a cached value is the FP8 value times its layer's scale (checkpoint k/v scales, else 1.0);
    # None for other caches (backends then pass no scale arguments)
    k_scale: Optional[float] = None
    v_scale: Optional[float] = None

    def kv_scale_constants(self) -> list:
        """[k_scale, v_scale] for a backend whose cached op takes them after its other constants, or []."""
        return [] if self.k_scale is None else [float(self.k_scale), float(self.v_scale or 1.0)]


@dataclass(frozen=True)
class PrepareMetadata:
    """The once-per-forward metadata op: op(*fields, *constants) -> `num_outputs` tensors fed to every layer."""

    op: Any  # an OpOverload
    fields: tuple[str, ...]  # sequence-info fields it reads (graph inputs)
    num_outputs: int
    constants: tuple = ()


class AttentionDescriptor:
    """A cached-attention backend. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    layout: ClassVar[str] = "bsnd"  # q/k/v layout the cached op takes
    supports_alibi: ClassVar[bool] = False  # the cached op takes `alibi_slopes=` (a [n_heads] float32 tensor)
    # sequence-info fields the cached op reads, in its argument order (right after q, k, v)
    metadata_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def source_op(cls) -> Any:
        from autodeploy_cli.ops import load_ops

        load_ops()
        return torch.ops.auto_deploy.torch_attention.default

    @classmethod
    def cached_op(cls) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> Optional[PrepareMetadata]:
        return None

    @classmethod
    def cache_initializers(cls, attn: AttentionNodeInfo, cache_config: CacheConfig) -> dict[str, CacheSpec]:
        """Per-layer caches by base name; the transform suffixes the layer index (k_cache -> k_cache_0)."""
        shape = (cache_config.page_size, attn.n_kv_heads, attn.head_dim)
        v_shape = (cache_config.page_size, attn.n_kv_heads, attn.v_head_dim)
        return {"k_cache": CacheSpec(shape, cache_config.dtype), "v_cache": CacheSpec(v_shape, cache_config.dtype)}

    @classmethod
    def global_buffers(cls, cache_config: CacheConfig) -> dict[str, Callable[[torch.device], torch.Tensor]]:
        """Buffers shared by all layers (name -> allocator), e.g. a planner workspace."""
        return {}

    @classmethod
    def constants(cls, attn: AttentionNodeInfo) -> list:
        """Trailing arguments of the cached op (python values or fx nodes such as sinks)."""
        return [attn.scale, attn.sinks, attn.sliding_window, attn.logit_cap]

    @classmethod
    def constant_kwargs(cls, attn: AttentionNodeInfo) -> dict:
        """Optional trailing arguments passed by name, only when the layer uses them (older cached ops, which do
        not know them, keep their signature)."""
        return {"alibi_slopes": attn.alibi_slopes} if attn.alibi_slopes is not None else {}

    @classmethod
    def unsupported_reason(cls, attn: AttentionNodeInfo) -> Optional[str]:
        """Why this backend cannot run `attn` (None: it can)."""
        return None

    @classmethod
    def refusal(cls, attn: AttentionNodeInfo) -> Optional[str]:
        """`unsupported_reason`, plus what every backend must declare (ALiBi support)."""
        reason = cls.unsupported_reason(attn)
        if reason is None and attn.alibi_slopes is not None and not cls.supports_alibi:
            reason = f"ALiBi position biases (alibi_slopes) are not implemented by the `{cls.name}` backend"
        return reason


def register_attention_backend(name: str) -> Callable[[type[AttentionDescriptor]], type[AttentionDescriptor]]:
    """Class decorator used by backend modules under kernels/."""

    def deco(cls: type[AttentionDescriptor]) -> type[AttentionDescriptor]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_attention_backend(name: str) -> type[AttentionDescriptor]:
    """The descriptor registered as `name` (a resolved name, not `auto`), importing its kernel module on first use."""
    from autodeploy_cli.ops import backends

    if name not in _REGISTRY:
        if name not in backends.MODULES["attention"]:
            backends.resolve("attention", name, "cpu")  # raises the unknown-backend error
        backends.load("attention", name)
        if name not in _REGISTRY:
            raise ADError(f"Module `{backends.MODULES['attention'][name]}` did not register the `{name}` attention "
                          "backend.")
    return _REGISTRY[name]
