"""Putting real tensors into a GraphModule whose parameters and buffers are on the meta device."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from autodeploy_cli.errors import ADError

# name -> fn(source tensors by name) -> tensor; lets transforms that reshape weights before loading
# (e.g. GEMM fusion, sharding) build their tensors from the checkpoint's
WeightHook = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# name -> fn(the full tensor, or a checkpoint tensor read lazily) -> this rank's part of it (sharding)
WeightSlicer = Callable[[Any], torch.Tensor]


def source_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """All parameters and buffers of a HF model by name, tied weights listed under every name."""
    tensors = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
    for n, b in model.named_buffers(remove_duplicate=False):
        tensors[n] = b
    return tensors


def graph_tensor_names(gm: nn.Module) -> dict[str, bool]:
    """name -> is_parameter, for every parameter and buffer the graph holds."""
    names = {n: True for n, _ in gm.named_parameters(remove_duplicate=False)}
    names.update({n: False for n, _ in gm.named_buffers(remove_duplicate=False)})
    return names


def _set_tensor(root: nn.Module, name: str, tensor: torch.Tensor, is_param: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if is_param:
        setattr(owner, leaf, nn.Parameter(tensor, requires_grad=False))
    else:
        owner.register_buffer(leaf, tensor, persistent=name in dict(owner.named_buffers(recurse=False)))


def assign_weights(gm: nn.Module, tensors: Mapping[str, Any], hooks: dict[str, WeightHook] | None = None,
                   slicers: dict[str, WeightSlicer] | None = None, device: torch.device | None = None) -> int:
    """Replace every parameter/buffer of `gm` by the same-named source tensor (no copy). Returns the count.

    With `slicers` (a sharded graph), each weight is this rank's part of its source tensor: copied out of it (so the
    full tensor can be freed), cast to the graph weight's dtype and moved to `device`. Sources may be read lazily
    (`CheckpointTensors`): only the rank's part is read."""
    hooks, slicers = hooks or {}, slicers or {}
    wanted = graph_tensor_names(gm)
    missing = [n for n in wanted if n not in tensors and n not in hooks]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ADError(
            f"The checkpoint has no tensor for {len(missing)} graph weight(s): {shown}. Check that the "
            "checkpoint matches the model config (and `model_kwargs`)."
        )
    current = dict(gm.named_parameters(remove_duplicate=False)) | dict(gm.named_buffers(remove_duplicate=False))
    for name, is_param in wanted.items():
        tensor = hooks[name](tensors) if name in hooks else tensors[name]
        if slicers or not isinstance(tensor, torch.Tensor):
            tensor = slicers[name](tensor) if name in slicers else tensor
            tensor = _owned(tensor if isinstance(tensor, torch.Tensor) else tensor[...], current[name].dtype, device)
        _set_tensor(gm, name, tensor, is_param)
    return len(wanted)


def _owned(t: torch.Tensor, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """`t` in `dtype` on `device`, never a view into a larger tensor (whose memory it would keep alive)."""
    if t.is_floating_point() and dtype.is_floating_point:
        t = t.to(dtype)
    t = t.to(device) if device is not None else t
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        t = t.clone()
    return t
