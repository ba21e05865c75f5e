"""`ad models`: the table (one line per entry when piped), filters, `show`, and suggestions for unknown ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from autodeploy_cli.cli import app
from model_registry import load_registry

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:] if line.strip()]


def test_ad_models_piped_prints_one_line_per_entry():
    out = subprocess.run([sys.executable, "-m", "autodeploy_cli", "models"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "family", "params"]
    assert len(lines) - 1 == len(load_registry()) >= 100
    assert "torch" not in out.stderr


def test_table_columns_of_a_flagship():
    result = invoke("models")
    assert result.exit_code == 0
    by_id = {r[0]: r for r in rows(result.stdout)}
    assert by_id["meta-llama/Llama-3.1-8B-Instruct"] == [
        "meta-llama/Llama-3.1-8B-Instruct", "llama", "8.03B", "1", "32", "world_size_1,max_seq_len_8k", "ok"]
    assert by_id["meta-llama/Llama-3.1-405B-Instruct"][2:5] == ["405.85B", "8", "126"]
    assert by_id["LGAI-EXAONE/EXAONE-3.5-32B-Instruct"][-1] == "unsupported"
    assert by_id["ad-tiny-llama"][4] == "2"


def test_family_and_search_filters():
    fam = rows(invoke("models", "--family", "qwen3_moe").stdout)
    assert [r[0] for r in fam] == ["Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B-Instruct-2507",
                                   "Qwen/Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-235B-A22B",
                                   "Qwen/Qwen3-235B-A22B-Instruct-2507", "Qwen/Qwen3-30B-A3B-FP8"]
    found = rows(invoke("models", "--search", "falcon3").stdout)
    assert [r[0] for r in found] == ["tiiuae/Falcon3-1B-Instruct", "tiiuae/Falcon3-3B-Instruct",
                                     "tiiuae/Falcon3-7B-Instruct", "tiiuae/Falcon3-10B-Instruct"]
    both = rows(invoke("models", "--family", "GEMMA2", "--search", "9b").stdout)
    assert [r[0] for r in both] == ["google/gemma-2-9b-it"]


def test_unknown_family_and_empty_search_are_one_paragraph_errors():
    result = invoke("models", "--family", "lama")
    assert result.exit_code == 2
    assert "ad: error: No model family `lama` in the registry. Did you mean `llama`? Families: llama, mistral," in \
        result.output
    result = invoke("models", "--search", "Llama-3.1-8B-Instruc7")
    assert result.exit_code == 2
    assert "No registry entry matches `--search Llama-3.1-8B-Instruc7`. Closest entries: " \
           "`nvidia/Llama-3.1-8B-Instruct-FP8`, `meta-llama/Llama-3.1-8B-Instruct`" in result.output


def test_show_prints_the_entry_architecture_and_resolved_config():
    result = invoke("models", "show", "meta-llama/Llama-3.1-8B-Instruct")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "  family: llama\n" in out
    assert "  architecture: llama-3.1-8b (model_registry/architectures/llama.yaml)\n" in out
    assert "  params: 8.03B (8,030,261,248)\n" in out
    assert "  config layers: world_size_1.yaml, max_seq_len_8k.yaml\n" in out
    assert "num_key_value_heads: 8\n" in out and "  rope_type: llama3\n" in out
    assert "\nmodel: meta-llama/Llama-3.1-8B-Instruct\n" in out and "\nmax_seq_len: 8192\n" in out


def test_show_unsupported_entry_gives_the_reason():
    out = invoke("models", "show", "microsoft/Phi-3-small-8k-instruct").stdout
    assert "  unsupported: model_type `phi3small` (blocksparse attention): its config.json names custom modeling " \
           "code" in out


def test_show_unknown_id_suggests_the_closest_entries():
    result = invoke("models", "show", "meta-llama/Llama-3.1-8b-instruct")
    assert result.exit_code == 2
    assert ("ad: error: `meta-llama/Llama-3.1-8b-instruct` is not in the model registry. Closest entries: "
            "`meta-llama/Llama-3.1-8B-Instruct`, `meta-llama/Llama-3.1-70B-Instruct`, "
            "`meta-llama/Llama-3.1-405B-Instruct`. `ad models --search <word>` lists entries by substring.") in \
        " ".join(result.output.split())
    short = invoke("models", "show", "qwen3-30b")
    assert "Closest entries: `Qwen/Qwen3-30B-A3B`, `Qwen/Qwen3-30B-A3B-Instruct-2507`" in " ".join(short.output.split())


def test_output_cut_short_by_head_is_not_an_error():
    import subprocess
    import sys

    cmd = f"{sys.executable} -m autodeploy_cli models show meta-llama/Llama-3.1-8B-Instruct | head -1"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert out.stdout == "meta-llama/Llama-3.1-8B-Instruct\n"
    assert out.returncode == 0 and "internal error" not in out.stderr and "BrokenPipe" not in out.stderr
