"""match_causal_conv: a depthwise causal conv1d written with aten ops becomes `auto_deploy::torch_causal_conv1d`.

The export patches emit torch_causal_conv1d for the mixers they know; this matcher catches the same conv where it
appears unpatched (HF's `causal_conv1d_fn` reference, an nn.Conv1d with padding K - 1 then a trim), over a
transposed [b, s, C] input as below or over a channels-first [b, C, s] input (LFM2's gated short conv; the op's
input is then transposed to [b, s, C] first):

Before:
    %t = aten.transpose(%x, 1, 2)                                 # [b, C, s]
    %c = aten.conv1d(%t, %w, %bias, [1], [K - 1], [1], C)         # [b, C, s + K - 1], w [C, 1, K]
    %s = aten.slice(%c, 2, None, %seq)                            # first s outputs: causal
    %a = aten.silu(%s)                                            # optional, folded
    %y = aten.transpose(%a, 1, 2)                                 # [b, s, C]
After:
    %y = auto_deploy.torch_causal_conv1d(%x, %w, %bias, 'silu')
Without the trailing transpose the op's output is transposed back ([b, C, s]) for the users of the slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op
from autodeploy_cli.graph.match import CAST_OPS, TRANSPOSE_OPS, arg, dtype, rank, record_miss, replace, skip, \
    static_shape, val
from autodeploy_cli.ops import load_ops
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten
CONV_OPS = (aten.conv1d.default, aten.conv1d.padding)


@dataclass
class MatchCausalConvOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads the weight shape and the sequence size of the trim


def _swaps_last_two(node: object) -> bool:
    """A transpose of dims (1, 2) of a rank-3 tensor."""
    if not (isinstance(node, fx.Node) and is_op(node, TRANSPOSE_OPS) and rank(node) == 3):
        return False
    return sorted(d % 3 for d in node.args[1:3]) == [1, 2]


def _trims_to_seq(sl: fx.Node, src: fx.Node, seq_dim: int) -> bool:
    """`sl` keeps the first s positions of dim 2, s = src's dim `seq_dim` (the same size node, int or symbol)."""
    dim, start, end = arg(sl, 1, "dim", 0), arg(sl, 2, "start"), arg(sl, 3, "end")
    if dim % 3 != 2 or start not in (None, 0) or arg(sl, 4, "step", 1) != 1:
        return False
    if isinstance(end, fx.Node) and is_op(end, aten.sym_size.int) and end.args[0] is src \
            and end.args[1] % 3 == seq_dim:
        return True
    out, ref = val(sl), val(src)
    return out is not None and ref is not None and str(out.shape[2]) == str(ref.shape[seq_dim])


def _causal_conv(conv: fx.Node) -> Optional[tuple]:
    """(x, x_is_channels_first, weight, bias, slice node) if `conv` is a depthwise causal conv, else None; a reason
    string when it looks like one but a check fails. x is [b, s, C] (the conv reads its transpose: Mamba2) or
    [b, C, s] (the conv reads it directly: LFM2's gated short conv)."""
    t = skip(arg(conv, 0, "input"), CAST_OPS)
    w, bias = arg(conv, 1, "weight"), arg(conv, 2, "bias")
    ws = static_shape(w)
    if not isinstance(t, fx.Node) or rank(t) != 3 or ws is None or len(ws) != 3:
        return None
    channels_first = not _swaps_last_two(t)
    x = t if channels_first else t.args[0]
    C, K = ws[0], ws[2]
    stride, padding, dilation, groups = (arg(conv, i, n, d) for i, n, d in
                                         ((3, "stride", [1]), (4, "padding", [0]), (5, "dilation", [1]), (6, "groups", 1)))
    if ws[1] != 1 or groups != C or list(stride) != [1] or list(dilation) != [1] or list(padding) != [K - 1]:
        return "not a depthwise stride-1 conv padded by K - 1"
    users = list(conv.users)
    if len(users) != 1 or not is_op(users[0], aten.slice.Tensor) or \
            not _trims_to_seq(users[0], x, 2 if channels_first else 1):
        return "the output is not trimmed to the first s positions (not causal)"
    return x, channels_first, w, bias, users[0]


def _rewrite(gm: fx.GraphModule, conv: fx.Node, x: fx.Node, channels_first: bool, w: fx.Node, bias,
             sl: fx.Node) -> list[fx.Node]:
    """Insert the canonical op (and a cast / transposes where needed); returns the new nodes."""
    graph = gm.graph
    end, act = sl, None
    nxt = list(sl.users)
    if len(nxt) == 1 and is_op(nxt[0], aten.silu.default):
        end, act = nxt[0], "silu"
    users = list(end.users)
    transposed_back = len(users) == 1 and _swaps_last_two(users[0])
    created = []
    with graph.inserting_before(conv):
        src = x
        if channels_first:  # the canonical op takes [b, s, C]
            src = graph.call_function(aten.transpose.int, (x, 1, 2))
            created.append(src)
        if dtype(arg(conv, 0, "input")) not in (None, dtype(x)):  # the conv ran in another dtype: keep it
            src = graph.call_function(aten.to.dtype, (src, dtype(arg(conv, 0, "input"))))
            created.append(src)
        new = graph.call_function(torch.ops.auto_deploy.torch_causal_conv1d.default, (src, w, bias, act))
        created.append(new)
    if transposed_back:
        replace(users[0], new)
        return created
    with graph.inserting_after(new):
        back = graph.call_function(aten.transpose.int, (new, 1, 2))
    replace(end, back)
    return created + [back]


@register("match_causal_conv")
class MatchCausalConv(BaseTransform):
    options_cls = MatchCausalConvOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        count, touched = 0, []
        for conv in [n for n in gm.graph.nodes if is_op(n, CONV_OPS)]:
            found = _causal_conv(conv)
            if isinstance(found, str):
                record_miss(ctx.misses, "causal_conv", conv, found)
            if not isinstance(found, tuple):
                continue
            touched += _rewrite(gm, conv, *found)
            count += 1
        return TransformInfo.matched(count, touched)
