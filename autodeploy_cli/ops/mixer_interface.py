"""Stateful token-mixer backends: how a canonical mixer op (SSM, causal conv, delta rule) becomes a cached call that
reads and writes per-sequence state slots. The sibling of `attention_interface.py`, one registry per op family.

A backend is a `MixerDescriptor` registered under (family, name); families: `ssm` (auto_deploy::torch_ssm), `causal_conv`
(auto_deploy::torch_causal_conv1d), `delta_rule` (auto_deploy::torch_gated_delta_rule). The insert transforms
(`insert_cached_ssm_attention`, `insert_cached_causal_conv`, `insert_cached_delta_rule`) read only this interface;
kernels are imported by module path from the table in `autodeploy_cli/ops/backends.py`.

What an insert transform builds for every canonical node, in this argument order:

    cached_op(*tensor inputs,         # the source op's tensor arguments, flattened to [1, T, ...] (all sequences)
              *metadata_fields,       # sequence-info tensors (graph inputs shared by all layers)
              *prepare_metadata outs, # one node per graph (shared by every mixer family of the backend)
              *states,                # this layer's state slots, e.g. ssm_state_3 [num_slots, H, P, N]
              *constants)             # python constants of the source op (chunk size, activation, ...)

Conventions every cached mixer follows (fields in `autodeploy_cli.ops.batch.FIELDS`):
  - the batch is flat: prefill sequences first (tokens cu_seqlen[b]:cu_seqlen[b+1]), then decodes (one token each);
    `batch_info_host` = [num_seqs, num_tokens, num_prefill, num_prefill_tokens, num_decode, ...];
  - sequence b owns state slot `slot_idx[b]` (two running sequences never share one; the runtime frees it on
    finish); `use_initial_states[b] = input_pos[b] > 0`: a sequence continues its slot's state (chunked prefill,
    decode) or starts from zero (a new or recomputed prompt), so a slot never needs clearing;
  - a batch of one token per sequence (T == B) takes a path without host reads or data-dependent shapes, so decode
    steps can be captured in CUDA graphs; the last slot (`num_slots - 1`) is the scratch slot padded rows write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from autodeploy_cli.errors import ADError
from autodeploy_cli.ops.attention_interface import PrepareMetadata
from autodeploy_cli.ops.cache import CacheConfig, StateSpec

FAMILIES = {"ssm": "torch_ssm", "causal_conv": "torch_causal_conv1d", "delta_rule": "torch_gated_delta_rule"}
# canonical ops that mix tokens along a whole prompt: on the cached graph's flat batch they must be replaced first
WHOLE_PROMPT_OPS = ("torch_attention", *FAMILIES.values())
_REGISTRY: dict[tuple[str, str], type["MixerDescriptor"]] = {}


@dataclass(frozen=True)
class MixerNodeInfo:
    """What an insert transform read from one canonical mixer node."""

    layer_idx: int  # 0, 1, ... in graph order within the family (names the states: ssm_state_<layer_idx>)
    dtype: torch.dtype  # the activations' dtype
    dims: dict[str, int] = field(default_factory=dict)  # family dims, e.g. ssm: heads, head_dim, groups, state_size
    constants: tuple = ()  # the source op's trailing python arguments, in schema order


class MixerDescriptor:
    """A cached-mixer backend of one family. Subclasses set the class attributes and implement the methods."""

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""
    # the source op's tensor arguments, by schema name, that the cached op takes first (in this order)
    tensor_inputs: ClassVar[tuple[str, ...]] = ()
    # sequence-info fields the cached op reads right after them
    metadata_fields: ClassVar[tuple[str, ...]] = ("batch_info_host", "cu_seqlen_host")

    @classmethod
    def source_op(cls) -> Any:
        from autodeploy_cli.ops import load_ops

        load_ops()
        return getattr(torch.ops.auto_deploy, FAMILIES[cls.family]).default

    @classmethod
    def cached_op(cls) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> Optional[PrepareMetadata]:
        return None

    @classmethod
    def state_initializers(cls, info: MixerNodeInfo, cache_config: CacheConfig) -> dict[str, StateSpec]:
        """Per-layer state slots by base name; the transform suffixes the layer index (ssm_state -> ssm_state_0)."""
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def constants(cls, info: MixerNodeInfo) -> list:
        return list(info.constants)

    @classmethod
    def unsupported_reason(cls, info: MixerNodeInfo) -> Optional[str]:
        return None


def state_dtype(info: MixerNodeInfo, cache_config: CacheConfig) -> torch.dtype:
    """Recurrent states (SSM, delta rule): `kv_cache_config.mamba_ssm_cache_dtype` (auto = the activations')."""
    return cache_config.mamba_ssm_cache_dtype or info.dtype


def has_whole_prompt_ops(gm: Any) -> bool:
    """Whether graph `gm` still calls a canonical whole-prompt op (not yet replaced by its cached version)."""
    graph = getattr(gm, "graph", None)
    if graph is None:
        return False
    targets = {getattr(torch.ops.auto_deploy, name).default for name in WHOLE_PROMPT_OPS
               if hasattr(torch.ops.auto_deploy, name)}
    return any(n.op == "call_function" and n.target in targets for n in graph.nodes)


def register_mixer_backend(family: str, name: str) -> Callable[[type[MixerDescriptor]], type[MixerDescriptor]]:
    """Class decorator used by backend modules under kernels/."""

    def deco(cls: type[MixerDescriptor]) -> type[MixerDescriptor]:
        cls.family, cls.name = family, name
        _REGISTRY[(family, name)] = cls
        return cls

    return deco


def get_mixer_backend(family: str, name: str) -> type[MixerDescriptor]:
    """The descriptor of `family` registered as `name` (a resolved name), importing its kernel module on first use."""
    from autodeploy_cli.ops import backends

    if (family, name) not in _REGISTRY:
        if name not in backends.MODULES[family]:
            backends.resolve(family, name, "cpu")  # raises the unknown-backend error
        backends.load(family, name)
        if (family, name) not in _REGISTRY:
            raise ADError(f"Module `{backends.MODULES[family][name]}` did not register the `{name}` {family} "
                          "backend.")
    return _REGISTRY[(family, name)]
