"""load_weights: materialise real weights into the graph (checkpoint, or seeded random init).

Before: get_attr model.layers.0.mlp.up_proj.weight on meta. After: the same attribute holds the real tensor on the
target device, and tensors the graph creates (arange(..., device=meta), .to(meta)) are created on that device
too. Tensors are shared with the loaded HF model, never copied, so peak memory stays one model.

A sharded graph (world_size > 1: `ctx.weight_slicers` says which part of each tensor this rank keeps) loads
only its parts:
  * checkpoint: read from the safetensors files slice by slice (`sliced_reads`), when every graph weight is found
    there by name; otherwise transformers loads the model on the CPU and each rank copies its slices to its device;
  * random weights: the same seeded init as one rank (so N ranks compute what one rank computes), each rank keeping
    its slices of the full tensors; a model too big for one device is initialised module by module instead
    (`random_init`);
  * a pre-sharded tensor (already of this rank's shape) is taken as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.checkpoint import CheckpointTensors, checkpoint_folder, computed_buffers
from autodeploy_cli.models.weights import assign_weights, graph_tensor_names, source_tensors
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class LoadWeightsOptions(TransformOptions):
    # sharded graphs: read each rank's slices straight from the checkpoint's safetensors files (false: load the
    # whole model with transformers on the CPU and slice it)
    sliced_reads: bool = True
    # sharded graphs with random weights: full = the whole seeded model on the device, each rank keeping its slices
    # (the weights world_size 1 gets); module = module by module, seeded per module (any model size, other values);
    # auto = full when the model fits in 80% of the device's free memory (always on CPU), else module
    random_init: str = "auto"
    choices: ClassVar[dict] = {"random_init": ("auto", "full", "module")}


def _tied_aliases(meta: torch.nn.Module, hf_config) -> dict[str, str]:
    text = getattr(hf_config, "get_text_config", lambda: hf_config)()
    out, inp = meta.get_output_embeddings(), meta.get_input_embeddings()
    if not getattr(text, "tie_word_embeddings", False) or out is None or inp is None:
        return {}
    names = {id(m): n for n, m in meta.named_modules()}
    return {f"{names[id(out)]}.weight": f"{names[id(inp)]}.weight"}


def _checkpoint_tensors(gm: fx.GraphModule, ctx: PassContext) -> CheckpointTensors | None:
    """Lazily read checkpoint tensors covering every graph weight by name, or None (then the HF loader is used)."""
    folder = checkpoint_folder(ctx.factory.source, ctx.factory.is_local)
    if folder is None:
        return None
    meta = ctx.factory.build_meta_model()
    tensors = CheckpointTensors(folder, _tied_aliases(meta, ctx.factory.hf_config()))
    wanted = graph_tensor_names(gm)
    buffers = [n for n, is_param in wanted.items() if not is_param and n not in tensors]
    try:
        tensors.extra = computed_buffers(meta, buffers)
    except (KeyError, AttributeError, RuntimeError):
        return None
    if any(n not in tensors and n not in ctx.weight_hooks for n in wanted):
        return None
    return tensors


def _random_mode(ctx: PassContext, mode: str) -> str:
    if mode != "auto":
        return mode
    if ctx.device.type != "cuda":
        return "full"
    from autodeploy_cli.models.random_init import model_bytes

    free, _ = torch.cuda.mem_get_info(ctx.device)
    return "full" if model_bytes(ctx.factory.build_meta_model()) < 0.8 * free else "module"


def _load_sharded(gm: fx.GraphModule, ctx: PassContext, sliced_reads: bool, random_init: str) -> tuple[int, str]:
    hooks, slicers = ctx.weight_hooks, ctx.weight_slicers
    if ctx.reference_model is not None:  # `--verify` materialised the full model already
        source, ctx.reference_model = ctx.reference_model, None
        return assign_weights(gm, source_tensors(source), hooks, slicers, ctx.device), "this rank's slices"
    if not ctx.config.skip_loading_weights and sliced_reads:
        tensors = _checkpoint_tensors(gm, ctx)
        if tensors is not None:
            direct = {k: v for k, v in hooks.items() if k not in tensors}  # the files' own tensor wins
            try:
                return assign_weights(gm, tensors, direct, slicers, ctx.device), "sliced reads of the checkpoint"
            except KeyError:
                pass  # a weight hook needs a tensor the files name differently: let transformers load it
    if ctx.config.skip_loading_weights and _random_mode(ctx, random_init) == "module":
        from autodeploy_cli.models.random_init import SeededModules

        meta = ctx.factory.build_meta_model()
        tensors = SeededModules(meta, ctx.device, ctx.config.seed, _tied_aliases(meta, ctx.factory.hf_config()))
        count = assign_weights(gm, tensors, hooks, slicers, ctx.device)
        return count, "this rank's slices of a module-by-module seeded init (the model does not fit whole)"
    on = torch.device("cpu") if not ctx.config.skip_loading_weights else ctx.device
    model = ctx.factory.materialize(on)
    count = assign_weights(gm, source_tensors(model), hooks, slicers, ctx.device)
    del model
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return count, f"this rank's slices of the model loaded on {on.type}"


@register("load_weights")
class LoadWeights(BaseTransform):
    options_cls = LoadWeightsOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        kind = "random init (seeded)" if ctx.config.skip_loading_weights else (
            "quantized checkpoint" if ctx.factory.checkpoint_quantized else "checkpoint")
        if ctx.weight_slicers:
            count, how = _load_sharded(gm, ctx, self.options.sliced_reads, self.options.random_init)
            note = f"{count} tensors from {kind} on {ctx.device}: {how} (rank {ctx.rank} of {ctx.world_size})"
        else:
            # a quantized checkpoint is read tensor by tensor (FP8 + scales); else the HF model's tensors are shared
            tensors = ctx.factory.weight_tensors(ctx.device, ctx.reference_model)
            ctx.reference_model = None
            count = assign_weights(gm, tensors, ctx.weight_hooks)
            del tensors
            note = f"{count} tensors from {kind} on {ctx.device}"
        retarget_device_kwargs(gm, ctx.device)
        return TransformInfo(num_matches=count, is_clean=True, has_valid_shapes=True, note=note)
