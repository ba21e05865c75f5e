"""fuse_gated_rmsnorm: the gated RMSNorm of Mamba2 / Gated DeltaNet layers runs as one Triton kernel.

The export patches emit the canonical op (HF's gated norm is ~10 elementwise kernels per layer on a decode step).
Before:  %n = auto_deploy.torch_rmsnorm_gated(%y, %z, %norm_weight, 1e-05, 1024, False)
After:   %n = auto_deploy.triton_rmsnorm_gated(%y, %z, %norm_weight, 1e-05, 1024, False)
With backend torch (the default on CPU) the reference op stays and the transform reports no match.
"""

from __future__ import annotations

from autodeploy_cli.pipeline.op_swap import OpSwapTransform
from autodeploy_cli.pipeline.registry import register


@register("fuse_gated_rmsnorm")
class FuseGatedRmsnorm(OpSwapTransform):
    source_op = "torch_rmsnorm_gated"
    fused_key = "rmsnorm_gated"
