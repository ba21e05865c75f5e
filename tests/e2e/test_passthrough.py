"""Passthrough: a user's own torch.library op inside the model survives every transform untouched, and the
blocks around it still become canonical ops."""

from __future__ import annotations

import re

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import op_name
from tests.transforms.pattern_helpers import PINNED


@torch.library.custom_op("ad_test_user::scale_shift", mutates_args=())
def scale_shift(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    return x * scale + shift


@scale_shift.register_fake
def _scale_shift_fake(x, scale, shift):
    return torch.empty_like(x)


def _wrap_mlps(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.model.layers:
        original = layer.mlp.forward
        layer.mlp.forward = lambda x, original=original: torch.ops.ad_test_user.scale_shift(original(x), 0.5, 0.25)
    return model


def test_user_op_survives_every_transform(tiny_dir, tmp_path, monkeypatch):
    from autodeploy_cli.models.factory import ModelFactory

    original = ModelFactory._from_config
    monkeypatch.setattr(ModelFactory, "_from_config", lambda self: _wrap_mlps(original(self)))
    dump = tmp_path / "graphs"
    result = build(resolve([], [f"model={tiny_dir('qwen3')}", "skip_loading_weights=true", *PINNED]), dump_dir=dump,
                   verify=True)
    assert result.verify_failure is None  # logits equal the (equally wrapped) HF model after every transform

    user = [n for n in result.model.graph.nodes if op_name(n) == "ad_test_user.scale_shift"]
    assert [n.args[1:] for n in user] == [(0.5, 0.25), (0.5, 0.25)]
    dumps = sorted(dump.glob("*.txt"))
    after_export = [p for p in dumps if int(p.name[:3]) >= 2]
    assert len(after_export) >= 20
    for path in after_export:  # every graph from export on holds both calls, with their constants
        assert len(re.findall(r"ad_test_user\.scale_shift\(%\w+, 0\.5, 0\.25\)", path.read_text())) == 2, path.name
    rows = {r["kind"]: (r["found"], r["expected"]) for r in result.report["coverage"]}
    assert rows == {"attention": (2, 2), "rope": (2, 2), "rmsnorm": (9, 9)}
