"""compile_model: wrap the final graph for execution with the chosen compile backend.

    torch-simple     the GraphModule as is
    torch-compile    torch.compile(dynamic=True): one compiled graph serves every batch and token count (only the
                     size-1 specialisation adds a second), so batch changes cause no recompile storm
    torch-cudagraph  decode CUDA graphs for `cuda_graph_batch_sizes` (default ladder up to max_batch_size; a
                     smaller batch pads to the next captured size), and prefill graphs for up to
                     `cuda_graph_prefill_max_seqs` sequences and `cuda_graph_prefill_tokens` tokens when the graph
                     reads no host metadata; other batches run eagerly
    torch-opt        torch-compile, with the decode graphs captured over the compiled model

Before:  ctx.model = GraphModule(...)
After:   ctx.model = CudaGraphModel(torch.compile(GraphModule(...), dynamic=True), graphs for bs in [64, 32, ..., 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
from torch import fx

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.ops.backends import resolve
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class CompileModelOptions(TransformOptions):
    # auto: torch-cudagraph on CUDA, torch-simple elsewhere | torch-simple | torch-compile | torch-cudagraph | torch-opt
    backend: str = "auto"
    cuda_graph_batch_sizes: Optional[List[int]] = None  # decode batch sizes to capture (None: a default ladder)
    # prefill / mixed steps: token buckets to capture (None: 16, 32, 48, 64, 96, ... up to 2048; []: none)
    cuda_graph_prefill_tokens: Optional[List[int]] = None
    cuda_graph_prefill_max_seqs: int = 4  # most sequences in a captured prefill step (buckets 1, 2, 4, ...)
    dynamo_backend: str = "inductor"  # torch.compile backend for torch-compile/torch-opt (eager/aot_eager: debug)
    cache_size_limit: int = 64  # torch._dynamo recompile limit (a few shape specialisations are expected)
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["compile"],
                               "dynamo_backend": ("inductor", "aot_eager", "eager")}


def _compile(gm: fx.GraphModule, opts: CompileModelOptions):
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, opts.cache_size_limit)
    return torch.compile(gm, dynamic=True, backend=opts.dynamo_backend)


def _capture(model, iface, opts: CompileModelOptions, backend: str):
    """The CUDA-graph runner over `model` (decode ladder + prefill buckets), captured now; and the note."""
    from autodeploy_cli.graph.cudagraph import CudaGraphModel, clean_sizes, prefill_buckets

    sizes = clean_sizes(opts.cuda_graph_batch_sizes, iface.info.max_batch_size)
    buckets, why_not = prefill_buckets(iface, opts.cuda_graph_prefill_tokens, opts.cuda_graph_prefill_max_seqs)
    runner = CudaGraphModel(model, iface, sizes, buckets)
    with torch.no_grad():
        runner.capture()
    note = f"{backend}: decode CUDA graphs for batch sizes {sizes}"
    if buckets:
        tokens = sorted({t for _, t in buckets})
        note += (f"; prefill graphs for <= {max(b for b, _ in buckets)} sequences x tokens {tokens[0]}.."
                 f"{tokens[-1]} ({len(buckets)} graphs)")
    elif why_not:
        note += f"; {why_not}"
    return runner, note


@register("compile_model")
class CompileModel(BaseTransform):
    options_cls = CompileModelOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        opts = self.options
        backend = resolve("compile", opts.backend, ctx.device.type)
        ctx.facts.compile_backend = backend
        model = gm
        note = backend
        if backend in ("torch-compile", "torch-opt"):
            model = _compile(gm, opts)
        if backend in ("torch-cudagraph", "torch-opt"):
            iface = ctx.cache
            if ctx.device.type != "cuda" or iface is None or not (iface.caches or iface.states):
                note = f"{backend}: no CUDA graphs ({'no KV cache' if ctx.device.type == 'cuda' else 'CPU'})"
            else:
                model, note = _capture(model, iface, opts, backend)
        ctx.model = model
        return TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True, note=note)
