"""The transform contract: stages, options, results, the base class and the context passed to every transform."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autodeploy_cli.config.schema import ADConfig
    from autodeploy_cli.factory import ModelFactory


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


@dataclass
class TransformContext:
    """Everything a transform may read or update besides the graph.

    `model` is the current model: an nn.Module on the meta device after `build_model`, a GraphModule after
    `export_to_gm`. A transform that replaces the model assigns `ctx.model`.
    """

    config: "ADConfig"
    factory: "ModelFactory"
    device: "torch.device"
    model: "nn.Module | None" = None
    rank: int = 0
    world_size: int = 1
    sequence_info: Any = None  # the runtime's batch/cache interface, once cache_init sets it up
    state: dict = field(default_factory=dict)  # facts transforms share (e.g. export patches used, MoE style)


class BaseTransform:
    """A graph transform registered under its YAML key. Subclasses implement `apply` only; the runner handles
    enabling, cleanup, timing, logging, dumps and verification."""

    name: ClassVar[str] = ""
    options_cls: ClassVar[type[TransformOptions]] = TransformOptions

    def __init__(self, options: TransformOptions):
        self.options = options

    def apply(self, gm: "nn.Module", ctx: TransformContext) -> TransformInfo:  # pragma: no cover - interface
        raise NotImplementedError


def options_field_names(cls: type[TransformOptions]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
