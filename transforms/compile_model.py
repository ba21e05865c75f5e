"""compile_model: wrap the final graph for execution with the chosen compile backend.

torch-simple runs the GraphModule as is; torch-compile wraps it in torch.compile(dynamic=True).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import fx

from autodeploy_cli.pipeline.interface import BaseTransform, TransformContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class CompileModelOptions(TransformOptions):
    backend: str = "torch-simple"  # torch-simple | torch-compile
    cuda_graph_batch_sizes: Optional[List[int]] = None  # decode batch sizes to capture (None: a default ladder)
    choices: ClassVar[dict] = {"backend": ("torch-simple", "torch-compile")}


@register("compile_model")
class CompileModel(BaseTransform):
    options_cls = CompileModelOptions

    def apply(self, gm: fx.GraphModule, ctx: TransformContext) -> TransformInfo:
        backend = self.options.backend
        if backend == "torch-compile":
            ctx.model = torch.compile(gm, dynamic=True)
        return TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True, note=backend)
