"""The Python API: `LLM(model, **config keys)` builds like the CLI and generates what `ad run` generates."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from autodeploy_cli import LLM, SamplingParams
from autodeploy_cli.cli import app
from autodeploy_cli.llm import config_from_kwargs


def test_keywords_resolve_like_the_cli_with_the_anchors_names():
    cfg = config_from_kwargs("ad-tiny-llama", kv_cache_dtype="fp8", tokens_per_block=16, free_mem_ratio=0.5,
                             max_seq_len=128, **{"transforms.compile_model.backend": "torch-simple"})
    assert (cfg.kv_cache_config.dtype, cfg.attn_page_size, cfg.max_seq_len) == ("fp8", 16, 128)
    assert cfg.transforms["resize_kv_cache"]["free_gpu_memory_fraction"] == 0.5  # shortcut reached its transform
    assert cfg.transforms["compile_model"]["backend"] == "torch-simple"


def test_generate_equals_ad_run():
    prompt = "How big is the universe? "
    run = CliRunner().invoke(app, ["run", "--json", "--prompt", prompt, "max_seq_len=128",
                                   "prompt.sp_kwargs.max_tokens=6", "prompt.sp_kwargs.ignore_eos=true"])
    assert run.exit_code == 0, run.output
    want = json.loads(run.stdout)["completions"][0]
    llm = LLM("ad-tiny-llama", max_seq_len=128)
    (text,) = llm.generate(prompt, SamplingParams(max_tokens=6, ignore_eos=True), chat_template=True)
    assert text.token_ids == want["token_ids"] and text.prompt_token_ids == want["prompt_token_ids"]
    ids = llm.generate([want["prompt_token_ids"], [5, 6]], SamplingParams(max_tokens=6, ignore_eos=True))
    assert ids[0].token_ids == want["token_ids"] and len(ids[1].token_ids) == 6
