"""Quantization configs (ModelOpt, HF quantization_config, the user's quant_config) and the FP8 checkpoint reader."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.models.quant_config import (DEFAULT_EXCLUDE, apply_user, module_excluded, read_scheme,
                                                scheme_from_hf, scheme_from_modelopt_file)
from autodeploy_cli.models.quant_weights import CheckpointTensors, fp8_linear_tensors, kv_scales
from autodeploy_cli.ops.quant import FP8, quantize_weight
from tests.quant_models import FIXTURE, edit_checkpoint, edit_json, modelopt_dir


def _user(**kw):
    base = dict(quant_algo=None, kv_cache_quant_algo=None, exclude_modules=None, weight_granularity="channel")
    return SimpleNamespace(**{**base, **kw})


def test_modelopt_export_is_read_as_written():
    s = scheme_from_modelopt_file(FIXTURE / "hf_quant_config.json")
    assert (s.source, s.weights, s.activations, s.kv_cache) == ("modelopt", "tensor", "static", "fp8")
    assert s.exclude == ("lm_head", "model.embed_tokens")
    # newer ModelOpt also writes quant_method: modelopt into config.json: the same scheme
    qc = json.loads((FIXTURE / "config.json").read_text())["quantization_config"]
    c = scheme_from_hf(qc, "config.json")
    assert (c.weights, c.activations, c.kv_cache, c.exclude) == ("tensor", "static", "fp8", s.exclude)


@pytest.mark.parametrize("qc,want", [
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
     ("block", "dynamic", (128, 128))),
    ({"quant_method": "fp8"}, ("block", "dynamic", (128, 128))),  # transformers' default block
    ({"quant_method": "fp8", "weight_block_size": None, "activation_scheme": "static"}, ("tensor", "static", None)),
    ({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0}, ("channel", "dynamic", None)),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {
        "weights": {"type": "float", "num_bits": 8, "strategy": "channel"},
        "input_activations": {"type": "float", "num_bits": 8, "strategy": "token", "dynamic": True}}},
      "ignore": ["lm_head"]}, ("channel", "dynamic", None)),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {
        "weights": {"type": "float", "num_bits": 8, "strategy": "tensor"},
        "input_activations": {"type": "float", "num_bits": 8, "strategy": "tensor", "dynamic": False}}}},
     ("tensor", "static", None)),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {
        "weights": {"type": "float", "num_bits": 8, "strategy": "block", "block_structure": [64, 32]},
        "input_activations": {"type": "float", "num_bits": 8, "strategy": "group", "dynamic": True}}}},
     ("block", "dynamic", (64, 32))),
])
def test_hf_quantization_configs(qc, want):
    s = scheme_from_hf(qc, "config.json")
    assert (s.weights, s.activations, s.block) == want


def test_hf_names_and_exclusions():
    s = scheme_from_hf({"quant_method": "fp8", "modules_to_not_convert": ["lm_head", "model.layers.0.mlp"]}, "c")
    assert s.weight_scale_names[0] == "weight_scale_inv" and s.input_scale_names[0] == "activation_scale"
    assert s.excludes("model.layers.0.mlp.down_proj") and not s.excludes("model.layers.1.mlp.down_proj")
    assert scheme_from_hf({"quant_method": "fp8"}, "c").exclude == DEFAULT_EXCLUDE  # the file is silent


@pytest.mark.parametrize("pattern,module,hit", [
    ("lm_head", "lm_head", True), ("lm_head", "language_model.lm_head", True),
    ("*.mlp.gate", "model.layers.3.mlp.gate", True), ("*.mlp.gate", "model.layers.3.mlp.gate_proj", False),
    ("model.layers.1.*", "model.layers.1.self_attn.q_proj", True), ("model.layers.1.*", "model.layers.11.mlp", False),
    ("re:.*\\.k_proj$", "model.layers.0.self_attn.k_proj", True), ("*router*", "model.layers.0.mlp.router", True),
    ("model.layers.0", "model.layers.0.self_attn.o_proj", True), ("q_proj", "model.layers.0.self_attn.k_proj", False),
])
def test_exclude_patterns(pattern, module, hit):
    assert module_excluded(module, [pattern]) is hit


@pytest.mark.parametrize("data,needle", [
    ({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4"}}, "quant_algo `NVFP4` is not supported"),
    ({"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "INT8"}},
     "kv_cache_quant_algo `INT8` is not supported"),
    ({"producer": {"name": "other"}, "quantization": {}}, "is not a ModelOpt config"),
])
def test_bad_modelopt_configs_name_the_file(tmp_path, data, needle):
    path = tmp_path / "hf_quant_config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ADError, match=needle) as e:
        scheme_from_modelopt_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_hf_method_and_unsupported_combinations():
    with pytest.raises(ADError, match="quant_method `awq` is not supported"):
        scheme_from_hf({"quant_method": "awq"}, "config.json")
    with pytest.raises(ADError, match="block-wise FP8 with static activation scales"):
        scheme_from_hf({"quant_method": "fp8", "activation_scheme": "static"}, "config.json")


def test_user_switch_adds_on_the_fly_fp8_and_overrides():
    s = apply_user(None, _user(quant_algo="fp8"))
    assert (s.source, s.weights, s.activations, s.kv_cache) == ("on-the-fly", "channel", "dynamic", None)
    s = apply_user(None, _user(quant_algo="FP8", weight_granularity="tensor", exclude_modules=["*.down_proj"],
                               kv_cache_quant_algo="FP8"))
    assert (s.weights, s.exclude, s.kv_cache) == ("tensor", ("*.down_proj",), "fp8")
    assert apply_user(None, _user()) is None
    ckpt = scheme_from_modelopt_file(FIXTURE / "hf_quant_config.json")
    assert apply_user(ckpt, _user(quant_algo="FP8")).source == "modelopt"  # already FP8: the file's scheme
    with pytest.raises(ADError, match="quant_algo: NVFP4` is not supported; use FP8"):
        apply_user(None, _user(quant_algo="NVFP4"))


def test_factory_reads_the_folder_and_the_checkpoint_dtype(tmp_path):
    from autodeploy_cli.models.factory import ModelFactory

    d = modelopt_dir(tmp_path / "mo")
    edit_json(d / "config.json", lambda c: (c.pop("dtype", None), c.pop("torch_dtype", None)))
    f = ModelFactory(resolve([], [f"model={d}", "device=cpu"]))
    assert f.checkpoint_quantized and f.kv_cache_dtype() == "fp8"
    f_gpu = ModelFactory(resolve([], [f"model={d}", "device=cpu"]))
    f_gpu.device = torch.device("cuda")  # dtype `auto` off the CPU: the checkpoint's bf16, not a float16 default
    assert f_gpu.model_dtype() == torch.bfloat16
    scheme = read_scheme(None, SimpleNamespace(), {"file": "hf_quant_config.json", "content": {
        "producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8"}}}, _user())
    assert scheme.source == "modelopt" and "quant_configs.yaml" in scheme.file


def test_checkpoint_reader_is_lazy_and_keeps_fp8(tmp_path):
    d = modelopt_dir(tmp_path / "mo")
    ckpt = CheckpointTensors(d).on(torch.device("cpu"), torch.float32)
    name = "model.layers.0.self_attn.q_proj"
    assert ckpt.is_fp8(f"{name}.weight") and not ckpt.is_fp8("model.norm.weight")
    assert ckpt.float_dtype() == torch.bfloat16
    assert ckpt[f"{name}.weight"].dtype == FP8 and ckpt["model.norm.weight"].dtype == torch.float32
    scheme = scheme_from_modelopt_file(d / "hf_quant_config.json")
    w, s, i = fp8_linear_tensors(ckpt, name, scheme)
    assert w.dtype == FP8 and s.shape == () and i.shape == ()
    assert kv_scales(ckpt).keys() == {0, 1} and all(k > 0 and v > 0 for k, v in kv_scales(ckpt).values())


def test_missing_and_misshapen_scales_name_the_tensor_and_the_file(tmp_path):
    d = modelopt_dir(tmp_path / "mo")
    name = "model.layers.1.mlp.up_proj"
    edit_checkpoint(d, lambda t: t.pop(f"{name}.weight_scale"))
    scheme = scheme_from_modelopt_file(d / "hf_quant_config.json")
    ckpt = CheckpointTensors(d).on(torch.device("cpu"), torch.float32)
    with pytest.raises(ADError, match=f"`{name}.weight`.*no scale for it.*`{name}.weight_scale`") as e:
        fp8_linear_tensors(ckpt, name, scheme)
    assert "model.safetensors" in str(e.value) and "hf_quant_config.json" in str(e.value)
    edit_checkpoint(d, lambda t: t.update({f"{name}.weight_scale": torch.ones(3)}))
    ckpt = CheckpointTensors(d).on(torch.device("cpu"), torch.float32)
    with pytest.raises(ADError, match=r"shape \[3\] does not fit a per-tensor scale"):
        fp8_linear_tensors(ckpt, name, scheme)


def test_a_real_weight_is_quantized_with_the_scheme():
    scheme = apply_user(None, _user(quant_algo="FP8"))
    w = torch.randn(16, 32)
    q, s, i = fp8_linear_tensors({"l.weight": w}, "l", scheme)
    ref_q, ref_s = quantize_weight(w, "channel")
    assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s, ref_s) and i is None
