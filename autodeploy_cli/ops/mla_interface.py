"""MLA backends: how a canonical `auto_deploy::torch_mla` node becomes a cached (paged, compressed) MLA call.

The same descriptor contract as attention (`attention_interface.py`: metadata fields, a once-per-forward metadata op,
per-layer caches, global buffers, constants), with MLA's own node facts and caches. `insert_cached_mla_attention`
builds, for every torch_mla node:

    cached_op(q_nope, q_pe, compressed_kv, kpe, kv_b_proj_weight,   # [1,T,n,nope] [1,T,n,rope] [1,T,r] [1,T,1,rope]
              *metadata_fields, *prepare_metadata outputs,
              ckv_cache_<i>, kpe_cache_<i>,                        # [pages, page_size, r], [pages, page_size, rope]
              *global_buffers, *constants)                         # constants: scale
        -> out [1, T, n, v]

The caches hold the compressed latent (after kv_a_layernorm) and the RoPE'd shared key: no head dimension, so
every tensor-parallel rank holds the same (kv_lora_rank + rope_dim) values per token and layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from autodeploy_cli.errors import ADError
from autodeploy_cli.ops.attention_interface import AttentionDescriptor
from autodeploy_cli.ops.cache import CacheConfig, CacheSpec

_REGISTRY: dict[str, type["MLADescriptor"]] = {}


@dataclass(frozen=True)
class MLANodeInfo:
    """What `insert_cached_mla_attention` read from one torch_mla node."""

    layer_idx: int
    n_heads: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    kv_lora_rank: int
    v_head_dim: int
    dtype: torch.dtype  # activations (q)
    scale: float


class MLADescriptor(AttentionDescriptor):
    """A cached-MLA backend: subclasses set `metadata_fields` and implement `cached_op` (and `prepare_metadata`)."""

    @classmethod
    def source_op(cls) -> Any:
        from autodeploy_cli.ops import load_ops

        load_ops()
        return torch.ops.auto_deploy.torch_mla.default

    @classmethod
    def cache_initializers(cls, mla: MLANodeInfo, cache_config: CacheConfig) -> dict[str, CacheSpec]:  # type: ignore[override]
        ps = cache_config.page_size
        return {"ckv_cache": CacheSpec((ps, mla.kv_lora_rank), cache_config.dtype),
                "kpe_cache": CacheSpec((ps, mla.qk_rope_head_dim), cache_config.dtype)}

    @classmethod
    def constants(cls, mla: MLANodeInfo) -> list:  # type: ignore[override]
        return [mla.scale]

    @classmethod
    def unsupported_reason(cls, mla: MLANodeInfo) -> Optional[str]:  # type: ignore[override]
        return None


def register_mla_backend(name: str) -> Callable[[type[MLADescriptor]], type[MLADescriptor]]:
    def deco(cls: type[MLADescriptor]) -> type[MLADescriptor]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_mla_backend(name: str) -> type[MLADescriptor]:
    """The MLA descriptor registered as `name` (resolved, not `auto`), importing its kernel module on first use."""
    from autodeploy_cli.ops import backends

    if name not in _REGISTRY:
        if name not in backends.MODULES["mla"]:
            backends.resolve("mla", name, "cpu")  # raises the unknown-backend error
        backends.load("mla", name)
        if name not in _REGISTRY:
            raise ADError(f"Module `{backends.MODULES['mla'][name]}` did not register the `{name}` MLA backend.")
    return _REGISTRY[name]
