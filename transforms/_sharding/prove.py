"""Proving a column -> row region: every op between the column-split openers and the row-split closer keeps the
split, so each rank computes its part exactly and one all-reduce after the closer restores the full result.

A split value is described by `Sh`: the split axis and its segments (a fused QKV output has three; each segment
is split on its own: `block` = this rank's 1/world_size, `kv` = one of n KV heads replicated over world_size / n
ranks). Each op of the body maps the input split to the output split or refuses; literal sizes that change (head
counts in views, slice bounds and split sizes of fused outputs) are recorded as `ArgEdit`s. Anything unknown
refuses: the region then falls back to gathered linears, never a wrong result.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op, op_name
from autodeploy_cli.graph.match import val
from transforms._sharding.plan import ArgEdit

aten = torch.ops.aten
INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class Seg:
    full: int
    local: int
    kind: str = "block"  # block | kv (kv: `local` is one head of `heads` KV heads, replicated over rank groups)
    heads: int = 0


@dataclass(frozen=True)
class Sh:
    axis: int
    segs: tuple[Seg, ...]

    @property
    def full(self) -> int:
        return sum(s.full for s in self.segs)

    @property
    def local(self) -> int:
        return sum(s.local for s in self.segs)


class Refused(Exception):
    """The region cannot be proven; the message says which op and why."""


def _ops(*names: str) -> tuple:
    out = []
    for name in names:
        ns, _, rest = name.partition(".")
        op, _, overload = rest.partition(".")
        packet = getattr(getattr(torch.ops, ns), op, None)
        if packet is not None:
            out.append(getattr(packet, overload or "default"))
    return tuple(out)


UNARY = _ops("aten.silu", "aten.gelu", "aten.relu", "aten.sigmoid", "aten.tanh", "aten.neg", "aten.exp",
             "aten.abs", "aten.square", "aten.to.dtype", "aten.to.dtype_layout", "aten._to_copy", "aten.alias",
             "aten.contiguous", "aten.clone", "aten.detach", "aten.dropout", "aten.mul.Scalar", "aten.div.Scalar",
             "aten.add.Scalar", "aten.sub.Scalar", "aten.pow.Tensor_Scalar", "aten.softplus", "aten.type_as",
             "aten.clamp")
BINARY = _ops("aten.add.Tensor", "aten.mul.Tensor", "aten.sub.Tensor", "aten.div.Tensor")
VIEWS = _ops("aten.view", "aten.reshape", "aten._unsafe_view")
ROPE = ("auto_deploy.torch_rope_with_explicit_cos_sin", "auto_deploy.torch_rope_with_qk_interleaving",
        "auto_deploy.torch_rope_with_complex_freqs")
STRUCTURAL = _ops("aten.transpose.int", "aten.permute", "aten.unsqueeze", "aten.squeeze.dim", "aten.slice.Tensor",
                  "aten.chunk", "aten.split_with_sizes", "aten.split.Tensor")


def body_capable(node: fx.Node) -> bool:
    """Ops a region body may contain (the ones `Prover` has a rule for)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    name = op_name(node)
    return (is_op(node, UNARY + BINARY + VIEWS + STRUCTURAL + (aten.cat.default,)) or name in ROPE
            or name in ("auto_deploy.torch_attention", "auto_deploy.torch_rmsnorm"))


def _ndim(node: Any) -> int:
    return len(val(node).shape)


def _static(sizes: Any) -> Optional[list[int]]:
    out = []
    for s in sizes:
        if not isinstance(s, int):
            return None
        out.append(s)
    return out


def _prod(xs: list[int]) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def view_axis(in_shape: Any, out_shape: Any, axis: int, sh: Sh) -> tuple[int, int]:
    """(output axis, its local size) of a view whose input is split on `axis` (one segment)."""
    trail_in = _static(list(in_shape)[axis + 1:])
    if trail_in is None or not isinstance(in_shape[axis], int):
        raise Refused("a view of a split tensor with symbolic trailing sizes")
    t_in, block = sh.full * _prod(trail_in), sh.local * _prod(trail_in)
    out = list(out_shape)
    for j in range(len(out)):
        trail = _static(out[j:])
        if trail is None or _prod(trail) != t_in or trail[0] == 1:
            continue
        t_after = _prod(trail[1:])
        if block % t_after:
            raise Refused(f"a view splits the split axis into pieces of {t_after} elements that {sh.local} of "
                          f"{sh.full} do not align with")
        return j, block // t_after
    raise Refused(f"a view {list(in_shape)} -> {list(out_shape)} moves the split axis where it cannot be followed")


def slice_bounds(node: fx.Node) -> tuple[Any, Any, Any]:
    """(start, end, step) of aten.slice.Tensor(x, dim, start, end, step), defaults filled in."""
    args = list(node.args) + [None] * (5 - len(node.args))
    start = args[2] if args[2] is not None else node.kwargs.get("start", 0) or 0
    end = args[3] if args[3] is not None else node.kwargs.get("end", INT_MAX)
    step = args[4] if args[4] is not None else node.kwargs.get("step", 1)
    return start, INT_MAX if end is None else end, step


class Prover:
    """Follows the split from the openers' outputs through the body to the closer's input."""

    def __init__(self, world_size: int, body: list[fx.Node], closer: fx.Node):
        self.ws = world_size
        self.body = body
        self.closer = closer
        self.vals: dict[fx.Node, Any] = {}
        self.edits: list[ArgEdit] = []
        self.attention = 0

    def run(self, seeds: dict[fx.Node, Sh]) -> None:
        self.vals.update(seeds)
        inside = set(self.body) | set(seeds) | {self.closer}
        for node in [*seeds, *self.body]:
            for user in node.users:
                if user not in inside and not self._harmless_user(user, node):
                    raise Refused(f"`{node.name}` is also read by `{user.name}` ({op_name(user)}) outside the block")
        for node in self.body:
            self.vals[node] = self.step(node)
        x = self.closer.args[0]
        sh = self.vals.get(x)
        if not isinstance(sh, Sh) or len(sh.segs) != 1 or sh.axis != _ndim(x) - 1 or sh.segs[0].kind != "block":
            raise Refused(f"the input of `{self.closer.name}` is not split evenly on its last axis")
        if sh.local * self.ws != sh.full:
            raise Refused(f"`{self.closer.name}` reads {sh.local} of {sh.full} features per rank")

    def _harmless_user(self, user: fx.Node, node: fx.Node) -> bool:
        sh = self.vals.get(node)
        return is_op(user, aten.sym_size.int) and isinstance(sh, Sh) and user.args[1] % _ndim(node) != sh.axis

    def _split(self, node: fx.Node, i: int) -> Optional[Sh]:
        a = node.args[i] if i < len(node.args) else None
        v = self.vals.get(a) if isinstance(a, fx.Node) else None
        if v is not None and not isinstance(v, Sh):
            raise Refused(f"`{node.name}` reads a tuple value")
        return v

    def _only(self, node: fx.Node, i: int = 0) -> Sh:
        sh = self._split(node, i)
        others = [a for j, a in enumerate(node.args) if j != i and isinstance(a, fx.Node) and a in self.vals]
        if sh is None or others:
            raise Refused(f"`{node.name}` ({op_name(node)}) mixes split inputs")
        return sh

    def step(self, node: fx.Node) -> Any:
        if node.target is operator.getitem:
            parts = self.vals.get(node.args[0])
            if not isinstance(parts, tuple):
                raise Refused(f"`{node.name}` indexes a value that is not split into parts")
            return parts[node.args[1]]
        name = op_name(node)
        if is_op(node, UNARY):
            return self._only(node)
        if is_op(node, BINARY):
            return self._binary(node)
        if is_op(node, VIEWS):
            return self._view(node)
        if name == "auto_deploy.torch_rmsnorm":
            sh = self._only(node)
            if sh.axis == _ndim(node) - 1:
                raise Refused(f"`{node.name}` normalizes over the split axis")
            return sh
        if name in ROPE:
            q, k = self._split(node, 0), self._split(node, 1)
            if q is None or k is None or q.axis == _ndim(node.args[0]) - 1 or k.axis == _ndim(node.args[1]) - 1:
                raise Refused(f"`{node.name}` (rope) does not get q and k split by heads")
            return (q, k)
        if name == "auto_deploy.torch_attention":
            return self._attention(node)
        if is_op(node, aten.cat.default):
            return self._cat(node)
        if is_op(node, STRUCTURAL):
            return self._structural(node)
        raise Refused(f"`{node.name}` ({name}) is not known to keep the split")

    def _cat(self, node: fx.Node) -> Sh:
        """cat along another axis (partial rotary: rotated and pass-through halves of each head) keeps the split."""
        parts = list(node.args[0])
        nd = _ndim(node)
        dim = (node.args[1] if len(node.args) > 1 else 0) % nd
        splits = {self.vals.get(p) if isinstance(p, fx.Node) else None for p in parts}
        if len(splits) != 1 or None in splits:
            raise Refused(f"`{node.name}` joins split and unsplit tensors")
        sh = splits.pop()
        if not isinstance(sh, Sh) or sh.axis == dim:
            raise Refused(f"`{node.name}` concatenates along the split axis")
        return sh

    def _binary(self, node: fx.Node) -> Sh:
        a, b = self._split(node, 0), self._split(node, 1)
        if a is not None and b is not None:
            if a != b:
                raise Refused(f"`{node.name}` combines two differently split inputs")
            return a
        sh, other = (a, node.args[1]) if a is not None else (b, node.args[0])
        if sh is None:
            raise Refused(f"`{node.name}` has no split input")
        if isinstance(other, fx.Node):
            shape, nd = list(val(other).shape), _ndim(node)
            idx = sh.axis - (nd - len(shape))
            if idx >= 0 and shape[idx] != 1:
                raise Refused(f"`{node.name}` combines the split axis with a full-size tensor `{other.name}`")
        return sh

    def _view(self, node: fx.Node) -> Sh:
        sh = self._only(node)
        if len(sh.segs) != 1:
            raise Refused(f"`{node.name}` views a fused output before it is sliced apart")
        j, local = view_axis(val(node.args[0]).shape, val(node).shape, sh.axis, sh)
        full = int(val(node).shape[j])
        shape = list(node.args[1])
        if isinstance(shape[j], fx.Node):
            raise Refused(f"`{node.name}` gives the split axis a symbolic size")
        if shape[j] != -1:
            shape[j] = local
            self.edits.append(ArgEdit(node.name, 1, shape))
        return Sh(j, (replace(sh.segs[0], full=full, local=local),))

    def _attention(self, node: fx.Node) -> Sh:
        from autodeploy_cli.graph.inputs import bound_args

        a = bound_args(node)
        head = 1 if a["layout"] == "bnsd" else 2
        q, k, v = (self.vals.get(a[x]) for x in ("q", "k", "v"))
        if a["attn_mask"] is not None or a["sinks"] is not None:
            raise Refused(f"`{node.name}` has a mask or sinks (not split by heads here)")
        if any(not isinstance(s, Sh) or s.axis != head or len(s.segs) != 1 for s in (q, k, v)):
            raise Refused(f"`{node.name}` does not get q, k and v split by heads")
        qs, ks = q.segs[0], k.segs[0]
        if qs.kind != "block" or qs.local * self.ws != qs.full:
            raise Refused(f"`{node.name}`: {qs.full} query heads do not split over {self.ws} ranks")
        for s in (ks, v.segs[0]):
            if s.kind == "kv" and not (s.local == 1 and self.ws % s.full == 0):
                raise Refused(f"`{node.name}`: {s.full} KV heads cannot be replicated over {self.ws} ranks")
            if s.kind == "block" and s.local * self.ws != s.full:
                raise Refused(f"`{node.name}`: {s.full} KV heads do not split over {self.ws} ranks")
        self.attention += 1
        return q

    def _structural(self, node: fx.Node) -> Any:
        sh = self._only(node)
        nd = _ndim(node.args[0])
        if is_op(node, aten.transpose.int):
            d0, d1 = (d % nd for d in node.args[1:3])
            return replace(sh, axis={d0: d1, d1: d0}.get(sh.axis, sh.axis))
        if is_op(node, aten.permute.default):
            return replace(sh, axis=[d % nd for d in node.args[1]].index(sh.axis))
        if is_op(node, aten.unsqueeze.default):
            d = node.args[1] % (nd + 1)
            return replace(sh, axis=sh.axis + (d <= sh.axis))
        if is_op(node, aten.squeeze.dim):
            d = node.args[1] % nd
            if d == sh.axis:
                raise Refused(f"`{node.name}` squeezes the split axis")
            return replace(sh, axis=sh.axis - (d < sh.axis))
        if is_op(node, aten.slice.Tensor):
            dim = (node.args[1] if len(node.args) > 1 else 0) % nd
            return sh if dim != sh.axis else self._slice(node, sh)
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % nd
        if dim != sh.axis:
            n = len(val(node))
            return tuple(sh for _ in range(n))
        return self._split_parts(node, sh)

    def _slice(self, node: fx.Node, sh: Sh) -> Sh:
        start, end, step = slice_bounds(node)
        if not isinstance(start, int) or not isinstance(end, int) or step != 1:
            raise Refused(f"`{node.name}` slices the split axis with symbolic bounds")
        end = min(end, sh.full)
        bounds, local = [0], [0]
        for s in sh.segs:
            bounds.append(bounds[-1] + s.full)
            local.append(local[-1] + s.local)
        if start not in bounds or end not in bounds:
            raise Refused(f"`{node.name}` slices [{start}:{end}] across the parts of a fused output")
        i, j = bounds.index(start), bounds.index(end)
        self.edits += [ArgEdit(node.name, 2, local[i]), ArgEdit(node.name, 3, local[j] if j < len(sh.segs) else INT_MAX)]
        return Sh(sh.axis, sh.segs[i:j])

    def _split_parts(self, node: fx.Node, sh: Sh) -> tuple:
        if is_op(node, aten.chunk.default):
            n = node.args[1]
            if sh.full % n:
                raise Refused(f"`{node.name}` chunks {sh.full} into {n}")
            sizes = [sh.full // n] * n
        elif is_op(node, aten.split_with_sizes.default):
            sizes = list(node.args[1])
        else:
            size = node.args[1]
            sizes = [size] * (sh.full // size) + ([sh.full % size] if sh.full % size else [])
        groups, i = [], 0
        for size in sizes:
            taken, total = [], 0
            while total < size and i < len(sh.segs):
                taken.append(sh.segs[i])
                total += sh.segs[i].full
                i += 1
            if total != size:
                raise Refused(f"`{node.name}` splits across the parts of a fused output")
            groups.append(Sh(sh.axis, tuple(taken)))
        locals_ = [g.local for g in groups]
        if is_op(node, aten.split_with_sizes.default):
            self.edits.append(ArgEdit(node.name, 1, locals_))
        elif len(set(locals_)) != 1:
            raise Refused(f"`{node.name}` would give the parts different sizes on this rank")
        elif is_op(node, aten.split.Tensor):
            self.edits.append(ArgEdit(node.name, 1, locals_[0]))
        return tuple(groups)
