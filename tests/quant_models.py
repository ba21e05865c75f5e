"""Tiny FP8 checkpoints for the tests: the committed ModelOpt export and a Hugging Face block-FP8 folder.

modelopt_dir: tests/fixtures/modelopt_fp8_tiny (a real nvidia-modelopt 0.47 export of the tiny Llama, FP8 weights,
activations and KV cache; tests/fixtures/make_modelopt_tiny.py made it) plus the byte tokenizer, in a fresh folder.
hf_block_fp8_dir: the tiny Llama with seeded bf16 weights, its linears quantized to FP8 in blocks the way
DeepSeek-V3 / Qwen3-FP8 ship them (`weight` float8_e4m3fn + `weight_scale_inv` [ceil(N/bn), ceil(K/bk)] float32,
`quantization_config: {quant_method: fp8, activation_scheme: dynamic, weight_block_size: [bn, bk]}`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "modelopt_fp8_tiny"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _add_tokenizer(path: Path) -> None:
    from model_registry import local_model_dir

    tok_dir = local_model_dir("ad-tiny-llama")
    for f in tok_dir.iterdir():
        if f.name != "config.json":
            shutil.copy(f, path / f.name)


def modelopt_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for f in FIXTURE.iterdir():
        shutil.copy(f, path / f.name)
    _add_tokenizer(path)
    return path


def hf_block_fp8_dir(path: Path, block: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from autodeploy_cli.ops.quant import quantize_weight
    from tests.tiny_models import tiny_hf_config

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(block)}
    cfg = tiny_hf_config("llama", quantization_config=qc)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tensors = {}
    for name, t in model.state_dict().items():
        if name.rsplit(".", 2)[-2] in LINEARS and name.endswith(".weight"):
            q, s = quantize_weight(t, "block", block)
            tensors[name], tensors[name + "_scale_inv"] = q, s
        else:
            tensors[name] = t.contiguous()
    save_file(tensors, str(path / "model.safetensors"))
    cfg.dtype = "bfloat16"
    cfg.save_pretrained(path)
    _add_tokenizer(path)
    return path


def edit_checkpoint(path: Path, fn: Callable[[dict], None], file: str = "model.safetensors") -> None:
    """Rewrite a folder's safetensors after fn(tensors) edits the dict in place."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / file))
    fn(tensors)
    save_file(tensors, str(path / file))


def edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def fp8_reference(model, scheme, tensors=None):
    """A copy of HF `model` whose linear layers the scheme covers run the canonical FP8 op on the same FP8 tensors
    the graph gets (`tensors`: a checkpoint's, else the model's own weights quantized) — the oracle for graphs."""
    import copy

    from torch import nn

    from autodeploy_cli.models.quant_weights import fp8_linear_tensors

    ref = copy.deepcopy(model)
    head = ref.get_output_embeddings()

    class Fp8Linear(nn.Module):
        def __init__(self, lin, prefix):
            super().__init__()
            src = tensors if tensors is not None else {f"{prefix}.weight": lin.weight.detach()}
            self.q, self.s, self.i = fp8_linear_tensors(src, prefix, scheme)
            self.bias = lin.bias

        def forward(self, x):
            if scheme.weights == "block":
                return torch.ops.auto_deploy.torch_quant_fp8_block_linear(x, self.q, self.bias, self.s, *scheme.block)
            return torch.ops.auto_deploy.torch_quant_fp8_linear(x, self.q, self.bias, self.i, self.s)

    for name, mod in list(ref.named_modules()):
        if isinstance(mod, nn.Linear) and mod is not head and not scheme.excludes(name):
            owner, _, leaf = name.rpartition(".")
            setattr(ref.get_submodule(owner), leaf, Fp8Linear(mod, name))
    return ref.eval()
