"""`ad run` with a bad prompt among good ones: the bad one fails alone, the others complete, exit status 1."""

from __future__ import annotations

from typer.testing import CliRunner

from autodeploy_cli.cli import app
from tests.e2e.hf_match import overrides


def test_bad_prompt_fails_alone(tiny_dir):
    long_prompt = "x" * 70  # 70 byte tokens > max_seq_len 64
    args = ["run", "--prompt", "", "--prompt", "ok", "--prompt", long_prompt,
            *overrides(tiny_dir("llama"), "llama", "prompt.chat_template=false", "prompt.sp_kwargs.max_tokens=4",
                       "prompt.sp_kwargs.ignore_eos=true")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    out = result.stdout
    assert "[0] error: empty prompt: give at least one token" in out
    assert "[1] completion (4 tokens, length)" in out
    assert "[2] error: prompt has 70 tokens, more than max_seq_len=64; shorten it or raise `max_seq_len`" in out
    assert "timing: prefill" in out
