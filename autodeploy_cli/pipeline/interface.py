"""The transform contract: stages, options, results, the base class and the context passed to every transform."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

    from autodeploy_cli.config.schema import ADConfig
    from autodeploy_cli.models.factory import ModelFactory
    from autodeploy_cli.models.weights import WeightHook, WeightSlicer
    from autodeploy_cli.ops.cache import CachedSequenceInterface


class Stage(str, Enum):
    """Pipeline stages in execution order (the order of definition is the order of execution)."""

    FACTORY = "factory"
    EXPORT = "export"
    POST_EXPORT = "post_export"
    PATTERN_MATCHER = "pattern_matcher"
    SHARDING = "sharding"
    WEIGHT_LOAD = "weight_load"
    POST_LOAD_FUSION = "post_load_fusion"
    CACHE_INIT = "cache_init"
    COMPILE = "compile"

    @property
    def order(self) -> int:
        return list(Stage).index(self)


@dataclass
class TransformOptions:
    """Options every transform has; a transform subclasses this to add its own (each documented)."""

    stage: str = ""  # one of Stage; set in default.yaml
    enabled: bool = True
    skip_on_error: bool = False  # turn an exception into a logged skip (shown in the build report)
    requires_clean_graph: bool = True  # run dead-code elimination + recompile first if the graph is dirty
    requires_shape_prop: bool = False  # also propagate shapes (node.meta["val"]) first if they are stale
    run_graph_cleanup: bool = True  # clean up after apply if the transform dirtied the graph
    run_shape_prop: bool = False  # also propagate shapes after apply


@dataclass(frozen=True)
class TransformInfo:
    """What a transform reports. A transform that did not touch the graph returns is_clean=has_valid_shapes=True."""

    skipped: bool = False
    num_matches: int = 0
    is_clean: bool = False
    has_valid_shapes: bool = False
    note: str = ""  # one line for the report (e.g. why it was skipped, which backend was used)

    @classmethod
    def untouched(cls, note: str = "", skipped: bool = False) -> "TransformInfo":
        return cls(skipped=skipped, num_matches=0, is_clean=True, has_valid_shapes=True, note=note)

    @classmethod
    def matched(cls, count: int, touched: "Iterable[fx.Node]" = (), note: str = "") -> "TransformInfo":
        """A matcher's result: shapes stay valid when the new/changed nodes `touched` get their fake values here
        (no whole-graph shape propagation needed)."""
        if not count:
            return cls.untouched(note)
        from autodeploy_cli.graph.match import infer_vals

        alive = [n for n in touched if not getattr(n, "_erased", False)]
        return cls(num_matches=count, is_clean=False, has_valid_shapes=infer_vals(alive), note=note)


# (input_ids [b, s], position_ids [b, s]) -> logits [b, s, vocab]: runs a prefill through the cached graph, so
# `ad build --verify` can compare it with HF after the cache is inserted
ProbeRunner = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass
class BuildFacts:
    """Facts transforms record for the build report and the commands (one field each, set by the named transform)."""

    num_params: int = 0  # build_model
    export_patches: list[str] = field(default_factory=list)  # export_to_gm: the patches that were on
    # export_to_gm: the export cache's answer (status hit | miss | off, path, time_s, save_s, note)
    export_cache: dict = field(default_factory=dict)
    moe_experts_implementation: Optional[str] = None  # match_moe_pattern: HF experts implementation matched
    attention_backend: Optional[str] = None  # insert_cached_attention: the resolved backend name
    mla_backend: Optional[str] = None  # insert_cached_mla_attention: the resolved backend name
    compile_backend: Optional[str] = None  # compile_model: the resolved backend name
    cpu_threads: Optional[int] = None  # llm.build_engine on CPU: intra-op threads the runtime uses
    quantization: Optional[str] = None  # quantize_fp8_linear_from_config: the scheme, in words
    quantized_linears: int = 0  # quantize_fp8_linear_from_config: linear layers made FP8
    # transforms that change the numerics on purpose (FP8 linears, an FP8 KV cache): `--verify` measures them with
    # the quality gate and compares later transforms with their output
    lossy: list[str] = field(default_factory=list)
    # detect_sharding / sharding_transform_executor: every sharding decision (the build report's "sharding" part)
    sharding: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """Everything a transform may read or update besides the graph.

    `model` is the current model: an nn.Module on the meta device after `build_model`, a GraphModule after
    `export_to_gm`, the compiled callable after `compile_model`. A transform that replaces the model assigns it.
    """

    config: "ADConfig"
    factory: "ModelFactory"
    device: "torch.device"
    model: "nn.Module | None" = None
    rank: int = 0
    world_size: int = 1
    cache: "CachedSequenceInterface | None" = None  # the batch/cache interface, created by the first cache_init user
    weight_hooks: dict[str, "WeightHook"] = field(default_factory=dict)  # graph weight -> how to build it at load
    # graph weight -> this rank's part of the full tensor (sharding_transform_executor; applied after the hooks)
    weight_slicers: dict[str, "WeightSlicer"] = field(default_factory=dict)
    sharding_plan: Any = None  # detect_sharding's plan, applied by sharding_transform_executor
    reference_model: "nn.Module | None" = None  # a materialised HF model load_weights may take its tensors from
    probe: Optional[ProbeRunner] = None  # set once the graph takes cache inputs
    facts: BuildFacts = field(default_factory=BuildFacts)
    misses: dict[str, list[dict]] = field(default_factory=dict)  # kind -> candidates a matcher rejected, and why

    def cache_interface(self) -> "CachedSequenceInterface":
        """The cache interface, created from the config on first use (by whichever cache_init transform runs first)."""
        if self.cache is None:
            from autodeploy_cli.ops.cache import make_interface

            hf = self.factory.hf_config() if self.factory is not None else None
            hf_ssm = getattr(hf, "mamba_ssm_cache_dtype", None)  # Nemotron-H's configs name float32
            self.cache = make_interface(self.config, self.device, self.factory.model_dtype(),
                                        kv_dtype=self.factory.kv_cache_dtype(), model_ssm_dtype=hf_ssm)
        return self.cache

    def use_cached_probe(self) -> None:
        """From now on `--verify` probes the graph through the cache interface (a prefill from position 0).

        While canonical whole-prompt ops remain uncached (e.g. torch_ssm after insert_cached_attention), they would
        read the flat batch as one sequence, so the probe then runs one sequence per forward."""
        self.probe = self._cached_probe

    def _cached_probe(self, ids: "torch.Tensor", pos: "torch.Tensor") -> "torch.Tensor":
        from autodeploy_cli.ops.mixer_interface import has_whole_prompt_ops

        iface = self.cache_interface()
        if ids.shape[0] > 1 and has_whole_prompt_ops(self.model):
            import torch

            return torch.cat([iface.run_prefill(self.model, ids[i: i + 1], pos[i: i + 1])
                              for i in range(ids.shape[0])])
        return iface.run_prefill(self.model, ids, pos)


class BaseTransform:
    """A graph transform registered under its YAML key. Subclasses implement `apply` only; the runner handles
    enabling, cleanup, timing, logging, dumps and verification."""

    name: ClassVar[str] = ""
    options_cls: ClassVar[type[TransformOptions]] = TransformOptions

    def __init__(self, options: TransformOptions):
        self.options = options

    def apply(self, gm: "nn.Module", ctx: PassContext) -> TransformInfo:  # pragma: no cover - interface
        raise NotImplementedError


def options_field_names(cls: type[TransformOptions]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
