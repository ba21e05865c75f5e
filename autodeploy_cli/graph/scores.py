"""Reading an eager attention's softmax input as `scale * q @ k^T (+ soft cap) + biases` with blocked positions.

Older HF models write attention in their own code, each its own way: Bloom `baddbmm(alibi, q, k^T)` on [b*n, s, d]
with the ALiBi bias folded in, MPT `q @ k^T * scale + position_bias` then `masked_fill(mask, min)`, GPT-Neo
`where(bias_buffer, q @ k^T, min) + mask` without a scale, XGLM a 3-D `bmm` between views clamped by
`max(x, min)`, Falcon `(q @ k^T + alibi) * scale + mask`. `parse_scores` walks the expression through casts, views,
sums, scalar multiples, fills with a very negative value and clamps; it returns the one q/k product with its scale
(and soft cap), every other additive term with its multiplier, and the fills. `build_mask` turns the terms and fills
into one mask (additive, or bool when there are no terms) that `attention_mask.classify_mask` then evaluates:
causal, sliding window, ALiBi, or kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import get_attr_value, is_op, op_name
from autodeploy_cli.graph.match import ALIAS_OPS, CAST_OPS, VIEW_OPS, arg, rank, scalar, static_shape

aten = torch.ops.aten
BLOCKED = -1e4  # fills at or below this are "not attended" (HF uses finfo.min or -1e4)
_PRODUCTS = (aten.matmul.default, aten.bmm.default)
_VALUE_PASS = (aten.detach.default, aten.detach_.default, aten.lift_fresh_copy.default, aten.alias.default,
               aten.clone.default) + CAST_OPS


@dataclass
class Scores:
    q: fx.Node  # [b, n, s, d] or [b*n, s, d] (casts stripped)
    kt: fx.Node  # [b, n, d, s_kv] or [b*n, d, s_kv]
    scale: float
    logit_cap: Optional[float] = None
    biases: list = field(default_factory=list)  # (node, multiplier): additive terms
    blocked: list = field(default_factory=list)  # bool nodes, True = not attended
    kept: list = field(default_factory=list)  # bool nodes, True = attended
    nodes: list = field(default_factory=list)  # the expression's own nodes (erased once replaced)


def const_value(x: Any) -> Optional[float]:
    """A Python number, or the value of a one-element constant node (a lifted constant with data, full([], v))."""
    if scalar(x) is not None:
        return scalar(x)
    node = x
    while isinstance(node, fx.Node) and is_op(node, _VALUE_PASS) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    if not isinstance(node, fx.Node):
        return None
    if is_op(node, aten.full.default) and list(node.args[0]) in ([], [1]):
        return scalar(node.args[1])
    if node.op == "get_attr":
        try:
            t = get_attr_value(node.graph.owning_module, str(node.target))
        except AttributeError:
            return None
        if isinstance(t, torch.Tensor) and t.numel() == 1 and t.device.type != "meta":
            return float(t.reshape(()).item())
    return None


def _is_blocking(x: Any) -> bool:
    v = const_value(x)
    return v is not None and v <= BLOCKED


class _Walker:
    def __init__(self) -> None:
        self.products: list = []  # (node, mult, cap)
        self.acc = Scores(q=None, kt=None, scale=1.0)  # type: ignore[arg-type]
        self.error = ""  # reserved for walks that must give up

    def walk(self, node: Any, mult: float) -> None:
        if self.error:
            return
        if not isinstance(node, fx.Node):
            return  # a Python number added to every score: the softmax ignores it
        leaf, passed = node, []  # a leaf is kept as written (its views give it the scores' shape)
        while is_op(node, CAST_OPS + ALIAS_OPS + VIEW_OPS) and isinstance(node.args[0], fx.Node):
            passed.append(node)
            node = node.args[0]
        if node.op == "call_function" and self._structural(node, mult):
            self.acc.nodes += passed
        else:
            self.acc.biases.append((leaf, mult))

    def _structural(self, node: fx.Node, mult: float) -> bool:
        """Descend into `node` if it is part of the expression's structure; False if it is a leaf (a bias)."""
        a, b = (arg(node, 0, "self"), arg(node, 1, "other")) if node.args else (None, None)
        if is_op(node, (aten.add.Tensor, aten.sub.Tensor)):
            alpha = scalar(node.kwargs.get("alpha", 1)) or 1.0
            self.acc.nodes.append(node)
            self.walk(a, mult)
            self.walk(b, mult * alpha * (-1.0 if is_op(node, aten.sub.Tensor) else 1.0))
            return True
        if is_op(node, (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar)):
            s = scalar(b) if scalar(b) is not None else (scalar(a) if is_op(node, aten.mul.Tensor) else None)
            if not s:
                return False
            inner = a if scalar(b) is not None else b
            self.acc.nodes.append(node)
            if is_op(inner, aten.tanh.default) and not is_op(node, (aten.div.Tensor, aten.div.Scalar)):
                return self._softcap(inner, mult, s)
            self.walk(inner, mult * (s if is_op(node, (aten.mul.Tensor, aten.mul.Scalar)) else 1.0 / s))
            return True
        if is_op(node, (aten.masked_fill.Scalar, aten.masked_fill.Tensor)) and _is_blocking(node.args[2]):
            self.acc.nodes.append(node)
            self.acc.blocked.append(node.args[1])
            self.walk(a, mult)
            return True
        if is_op(node, (aten.where.self, aten.where.ScalarOther)) and _is_blocking(node.args[2]):
            self.acc.nodes.append(node)
            self.acc.kept.append(node.args[0])
            self.walk(node.args[1], mult)
            return True
        if is_op(node, (aten.max.other, aten.maximum.default, aten.clamp_min.default)) and _is_blocking(b):
            self.acc.nodes.append(node)  # max(x, min): only turns -inf into min, which is still not attended
            self.walk(a, mult)
            return True
        if is_op(node, aten.baddbmm.default):  # beta * bias + alpha * (b1 @ b2)
            self.acc.nodes.append(node)
            beta, alpha = (scalar(node.kwargs.get(k, 1.0)) for k in ("beta", "alpha"))
            self.walk(node.args[0], mult * (1.0 if beta is None else beta))
            self.products.append((node, mult * (1.0 if alpha is None else alpha), None))
            return True
        if is_op(node, _PRODUCTS):
            self.products.append((node, mult, None))
            return True
        return False

    def _softcap(self, tanh: fx.Node, mult: float, cap: float) -> bool:
        inner = _Walker()
        inner.walk(tanh.args[0], 1.0)
        if inner.error or len(inner.products) != 1 or inner.acc.biases or inner.acc.blocked or inner.acc.kept:
            return False
        prod, m, _ = inner.products[0]
        if abs(mult - 1.0) > 1e-6 or cap <= 0:
            return False  # cap * tanh(scale * P / cap) is the only capped form
        self.acc.nodes += [tanh] + inner.acc.nodes
        self.products.append((prod, m * cap, cap))
        return True


def _operands(prod: fx.Node) -> tuple[Any, Any]:
    if is_op(prod, aten.baddbmm.default):
        return prod.args[1], prod.args[2]
    return prod.args[0], prod.args[1]


def parse_scores(x: fx.Node) -> tuple[Optional[Scores], str]:
    """The softmax input `x` as a Scores expression, or (None, why not)."""
    w = _Walker()
    w.walk(x, 1.0)
    if w.error:
        return None, w.error
    if len(w.products) != 1:
        leaf = next((b for b, _ in w.acc.biases if isinstance(b, fx.Node)), None)
        what = op_name(leaf).replace("aten.", "") if leaf is not None else "nothing"
        return None, (f"scores come from `{what}`, not a q @ k^T product" if not w.products
                      else "the softmax input holds more than one q @ k^T product")
    prod, mult, cap = w.products[0]
    q, kt = _operands(prod)
    if not (isinstance(q, fx.Node) and isinstance(kt, fx.Node)) or rank(q) not in (3, 4) or rank(kt) != rank(q):
        return None, "scores are not a product of two 3-D or 4-D tensors"
    acc = w.acc
    acc.q, acc.kt, acc.nodes = _strip(q), _strip(kt), acc.nodes + [prod]
    acc.scale, acc.logit_cap = mult, cap
    return acc, ""


def _strip(x: fx.Node) -> fx.Node:
    while is_op(x, CAST_OPS) and isinstance(x.args[0], fx.Node):
        x = x.args[0]
    return x


def heads_of(x: fx.Node) -> Optional[int]:
    shape = static_shape(x)
    return shape[1] if shape is not None and len(shape) == 4 else None


def to_4d(graph: fx.Graph, x: fx.Node, heads: int, new: list) -> fx.Node:
    """[b*n, s, d] -> [b, n, s, d]: the 4-D tensor it was reshaped from, else an unflatten node."""
    src = x
    while is_op(src, VIEW_OPS + ALIAS_OPS) and isinstance(src.args[0], fx.Node):
        src = src.args[0]
        if rank(src) == 4 and heads_of(src) == heads:
            return src
    node = graph.call_function(aten.unflatten.int, (x, 0, [-1, heads]))
    new.append(node)
    return node


def key_of(graph: fx.Graph, kt: fx.Node, heads: Optional[int], new: list) -> fx.Node:
    """k ([b, n_kv, s, d]) from k^T: the transpose's input when kt is one over the last two dims, else a new
    transpose (a later transform removes transpose pairs)."""
    r = rank(kt)
    if is_op(kt, aten.transpose.int) and {d % r for d in kt.args[1:3]} == {r - 2, r - 1}:
        k = kt.args[0]
    else:
        k = graph.call_function(aten.transpose.int, (kt, -2, -1))
        new.append(k)
    return to_4d(graph, k, heads, new) if r == 3 else k


def build_mask(graph: fx.Graph, s: Scores, heads: int, new: list) -> Optional[fx.Node]:
    """One mask for torch_attention from the terms and fills: additive (terms, -inf where blocked) or, without
    terms, bool (True = attend). Inserted at the graph's insert point; new nodes are appended to `new`."""

    def add(target, args):
        node = graph.call_function(target, args)
        new.append(node)
        return node

    def four_d(x: fx.Node) -> fx.Node:
        return add(aten.unflatten.int, (x, 0, [-1, heads])) if rank(x) == 3 else x

    total = None
    for b, m in s.biases:
        term = four_d(b) if isinstance(b, fx.Node) else b
        if m != 1.0:
            term = add(aten.mul.Tensor, (term, m))
        total = term if total is None else add(aten.add.Tensor, (total, term))
    blocked = [four_d(m) for m in s.blocked] + [add(aten.logical_not.default, (four_d(c),)) for c in s.kept]
    if total is None:
        if not blocked:
            return None
        visible = add(aten.logical_not.default, (blocked[0],))
        for m in blocked[1:]:
            visible = add(aten.logical_and.default, (visible, add(aten.logical_not.default, (m,))))
        return visible
    for m in blocked:
        total = add(aten.where.ScalarSelf, (m, float("-inf"), total))
    return total
