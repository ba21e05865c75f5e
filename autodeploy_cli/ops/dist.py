"""auto_deploy::torch_dist_all_reduce / torch_dist_all_gather: the collectives sharding inserts into the graph.

They run on torch.distributed's default process group (NCCL on GPUs, gloo on CPU; `autodeploy_cli.distributed`
creates it). Without a process group (one rank) they return a copy of their input. On NCCL both are capturable in
CUDA graphs: they enqueue on the device and never wait on the host.
"""

from __future__ import annotations

import torch

# gloo reduces these dtypes slowly or not at all: it reduces a float32 copy instead
_GLOO_UPCAST = (torch.float16, torch.bfloat16)


def group_size() -> int:
    """Ranks in the default process group (1 when there is none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _is_nccl() -> bool:
    import torch.distributed as dist

    return dist.get_backend() == "nccl"


@torch.library.custom_op("auto_deploy::torch_dist_all_reduce", mutates_args=())
def torch_dist_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `x` over every rank. x: any shape, the same on every rank. Returns a new tensor of x's
    shape and dtype (a copy of x on one rank)."""
    import torch.distributed as dist

    if group_size() == 1:
        return x.clone()
    if not _is_nccl() and x.dtype in _GLOO_UPCAST:
        out = x.float()
        dist.all_reduce(out)
        return out.to(x.dtype)
    out = x.contiguous().clone()
    dist.all_reduce(out)
    return out


@torch_dist_all_reduce.register_fake
def _all_reduce_fake(x):
    return torch.empty_like(x)


@torch.library.custom_op("auto_deploy::torch_dist_all_gather", mutates_args=())
def torch_dist_all_gather(x: torch.Tensor, dim: int = -1, world_size: int = 1) -> torch.Tensor:
    """Concatenation of every rank's `x` along `dim`, in rank order. x: [..., n, ...] (the same shape on every
    rank); world_size: the number of ranks (part of the op so shapes are known without a process group).
    Returns [..., world_size * n, ...]."""
    import torch.distributed as dist

    size = group_size()
    if size != world_size:
        raise RuntimeError(f"torch_dist_all_gather was built for {world_size} ranks but the process group has {size}")
    d = dim % x.dim()
    if world_size == 1:
        return x.clone()
    x = x.contiguous()
    stacked = x.new_empty((world_size, *x.shape))  # [ranks, ...]
    if _is_nccl():
        dist.all_gather_into_tensor(stacked, x)
    else:
        dist.all_gather(list(stacked.unbind(0)), x)
    shape = (*x.shape[:d], world_size * x.shape[d], *x.shape[d + 1:])
    return stacked.movedim(0, d).reshape(shape)


@torch_dist_all_gather.register_fake
def _all_gather_fake(x, dim=-1, world_size=1):
    d = dim % x.dim()
    return x.new_empty((*x.shape[:d], world_size * x.shape[d], *x.shape[d + 1:]))
