"""fuse_rmsnorm: the canonical RMSNorm runs as one Triton kernel (one read, one write per row).

Before:  %n = auto_deploy.torch_rmsnorm(%x, %w, 1e-05, 0.0)
After:   %n = auto_deploy.triton_rmsnorm(%x, %w, 1e-05, 0.0)
With backend torch (the default on CPU) the reference op stays and the transform reports no match.
"""

from __future__ import annotations

from autodeploy_cli.pipeline.op_swap import OpSwapTransform
from autodeploy_cli.pipeline.registry import register


@register("fuse_rmsnorm")
class FuseRmsnorm(OpSwapTransform):
    source_op = "torch_rmsnorm"
    fused_key = "rmsnorm"
