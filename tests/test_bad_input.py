"""Bad input and first-run experience: each case as a new user typed it, with the exact message or behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from autodeploy_cli.cli import app

runner = CliRunner()


def ad(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


def error_of(res) -> str:
    assert res.exit_code == 2, res.output
    text = res.output.strip().splitlines()[-1]
    assert text.startswith("ad: error: ") and "internal error" not in res.output, res.output
    return text[len("ad: error: "):]


def test_unknown_device_is_named_with_the_valid_forms():
    assert error_of(ad("build", "--print-config", "device=tpu")) == (
        "Invalid value `tpu` for `device`: use auto, cpu, cuda or cuda:N (N = a GPU index, e.g. cuda:1).")


def test_invalid_utf8_prompt_fails_alone():
    code = ("import sys; sys.argv = ['ad', 'run', '--prompt', b'ab\\xffc'.decode('utf-8', 'surrogateescape'), "
            "'--prompt', 'hello', 'prompt.sp_kwargs.max_tokens=3', 'max_seq_len=64']\n"
            "from autodeploy_cli.cli import main\nmain()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "AUTO_DEPLOY_LOG_LEVEL": "WARNING"})
    assert out.returncode == 1 and "internal error" not in out.stderr
    assert "[0] error: the prompt is not valid UTF-8 (byte 0xff at character 2); give UTF-8 text or token ids" \
        in out.stdout
    assert "[1] completion (3 tokens" in out.stdout


def test_report_path_is_checked_before_the_build(tmp_path):
    assert error_of(ad("build", "--report", str(tmp_path))) == (
        f"`--report {tmp_path}` is a directory; give a file path (e.g. `--report {tmp_path / 'result.json'}`).")
    assert "Cannot create the folder `/proc/version`" in error_of(ad("build", "--report", "/proc/version/r.json"))
    nested = tmp_path / "new" / "deeper" / "report.json"
    res = ad("build", "--report", str(nested), "max_seq_len=64")
    assert res.exit_code == 0 and json.loads(nested.read_text())["model"] == "ad-tiny-llama"


def test_did_you_mean_only_when_close():
    msg = error_of(ad("build", "--print-config", "frobnicate=1"))
    assert msg.startswith("Unknown config key `frobnicate`. Valid keys at the top level: model,")
    assert "Did you mean" not in msg
    assert error_of(ad("run", "--force")).startswith(
        "`ad run` has no option `--force` and `force` is not a config key either. Options of `ad run`: --config, "
        "--json, --model, --print-config, --prompt, --yaml-extra")
    assert "Did you mean `--prompt`?" in error_of(ad("run", "--promt", "hi"))


def test_shortcut_errors_name_the_key_typed():
    assert error_of(ad("build", "--print-config", "attn_backend=trtion")) == (
        "Invalid value `trtion` for `attn_backend`: choose one of auto, torch, triton, flashinfer. Did you mean "
        "`triton`?")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("max_seq_len: 64\nprompt: [1, 2\nworld_size: 1\n")
    assert error_of(ad("build", "--print-config", "--config", str(f))) == (
        f"Config file `{f}` is not valid YAML: at line 3, column 11: expected ',' or ']', but got ':' (while parsing "
        "a flow sequence at line 2, column 9). Fix the syntax and run again.")


def test_a_directory_is_not_said_to_not_exist(tmp_path):
    assert error_of(ad("build", "--print-config", "--config", str(tmp_path))) == (
        f"Config file `{tmp_path}` is a directory, not a YAML file. Give the path of a .yaml file to --config.")


def test_graph_dump_refusal_names_the_env_variable(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    msg = error_of(ad("build", env={"AD_DUMP_GRAPHS_DIR": str(tmp_path)}))
    assert f"(AD_DUMP_GRAPHS_DIR={tmp_path})" in msg and "--force" not in msg and "--out" not in msg
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_wrong_types_speak_yaml_not_omegaconf():
    assert error_of(ad("build", "--print-config", "prompt.sp_kwargs.stop_token_ids=abc")) == (
        "Wrong type for config key `prompt.sp_kwargs.stop_token_ids`: got `abc` (a string); it expects a list of "
        "integers, e.g. `prompt.sp_kwargs.stop_token_ids=[2, 7]`.")


def test_tokenizer_that_cannot_load_names_the_files_it_looked_for(tmp_path):
    from tests.tiny_models import tiny_hf_config

    tiny_hf_config("llama").save_pretrained(tmp_path)
    assert error_of(ad("run", f"model={tmp_path}", "skip_loading_weights=true")) == (
        f"Could not load the tokenizer from `{tmp_path}`: it holds none of the files a tokenizer is read from "
        "(tokenizer.json, tokenizer.model, vocab.json, merges.txt, tokenizer_config.json). Copy the model's tokenizer "
        "files there, or point `tokenizer` at a folder or hub id that has them.")


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    import autodeploy_cli.models.factory as factory

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(factory, "hub_unreachable", lambda: "huggingface.co:443: Network is unreachable")
    msg = error_of(ad("build", "--model", "someorg/not-cached-model"))
    assert msg == ("Could not load the config of `someorg/not-cached-model`: it is not in the Hugging Face cache and "
                   "the hub cannot be reached (huggingface.co:443: Network is unreachable). Without network, download "
                   "the model elsewhere and point `model` at the local folder (`model=/path/to/hf_dir`), or set "
                   "HF_HUB_OFFLINE=1 to use only what is cached.")


def test_cpu_notes_for_fp8_kv_and_float16(caplog):
    res = ad("run", "kv_cache_config.dtype=fp8", "dtype=float16", "max_seq_len=128", "prompt.sp_kwargs.max_tokens=2")
    assert res.exit_code == 0, res.output
    assert "kv_cache_config.dtype=fp8 on CPU: K/V are stored as float8 e4m3" in res.output
    assert "dtype=float16 on CPU: most CPUs have no fast float16 matmul" in res.output


def test_max_tokens_past_max_seq_len_is_capped_with_a_warning():
    res = ad("run", "--prompt", "hello", "max_seq_len=16", "prompt.sp_kwargs.max_tokens=40",
             "prompt.chat_template=false", "prompt.sp_kwargs.ignore_eos=true")
    assert res.exit_code == 0
    assert ("max_tokens=40 with a 5-token prompt goes past max_seq_len=16: the request stops at 11 new tokens "
            "(finish reason `length`).") in res.output
    assert "[0] completion (11 tokens, length)" in res.output


def test_bench_output_keeps_an_existing_file(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("old results")
    args = ["bench", "--isl", "4", "--osl", "2", "--num-requests", "1", "max_seq_len=32", "--output", str(out)]
    res = ad(*args)
    assert res.exit_code == 0, res.output
    assert out.read_text() == "old results" and json.loads((tmp_path / "bench.1.json").read_text())["runs"]
    assert ad(*args, "--force").exit_code == 0 and json.loads(out.read_text())["runs"]


def test_unknown_log_level_is_an_error_listing_the_levels():
    out = subprocess.run([sys.executable, "-m", "autodeploy_cli", "run"], capture_output=True, text=True,
                         env={**os.environ, "AUTO_DEPLOY_LOG_LEVEL": "LOUD"}, timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == (
        "ad: error: AUTO_DEPLOY_LOG_LEVEL=LOUD is not a log level: use DEBUG, INFO, WARNING, ERROR (default "
        "WARNING; INFO shows every transform's log lines).")


def test_empty_text_prompt_is_refused_before_the_chat_template():
    res = ad("run", "--prompt", "", "--prompt", "hi", "prompt.sp_kwargs.max_tokens=2", "max_seq_len=64")
    assert res.exit_code == 1  # the tiny model has a chat template: "" would otherwise become template tokens
    assert "[0] error: empty prompt: give at least one token" in res.output and "[1] completion" in res.output


def test_print_config_rejects_what_the_build_would(monkeypatch):
    res = ad("build", "--print-config", "max_seq_len=0")
    assert "max_seq_len: 0" in res.output and error_of(res) == "`max_seq_len` must be at least 1, got 0."
    assert error_of(ad("build", "--print-config", "transforms.compile_model.backnd=1")).startswith(
        "Unknown option `transforms.compile_model.backnd`. Did you mean `backend`?")


def test_version_quiet_and_no_arguments():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "autodeploy_cli", *args], capture_output=True, text=True,
                              timeout=120)

    assert cli("--version").stdout.strip() == "ad 0.1.0"
    bare = cli()
    assert bare.returncode == 0 and "Usage:" in bare.stdout and "build" in bare.stdout
    quiet, verbose = cli("run", "-q", "max_seq_len=128"), cli("run", "-v", "max_seq_len=128")
    assert quiet.returncode == verbose.returncode == 0
    assert "[AUTO-DEPLOY]" not in quiet.stderr and "[SUMMARY] matches=" in verbose.stderr
    assert "cpu threads 1 (OMP_NUM_THREADS to change)" in quiet.stdout  # tiny model: one intra-op thread


def test_progress_display_follows_the_build_on_a_terminal(monkeypatch):
    from autodeploy_cli import log

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("AUTO_DEPLOY_LOG_LEVEL")
    seen = []
    monkeypatch.setattr(log, "listening", _spy(log.listening, seen))
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.pipeline.build import build

    with log.build_progress():
        build(resolve([], ["max_seq_len=64"]))
    names = [s[3] for s in seen]
    assert names[0] == "build_model" and names[-1] == "compile_model" and len(names) == seen[0][1]


def _spy(real, seen):
    import contextlib

    @contextlib.contextmanager
    def listening(on_record):
        def record(r):
            if getattr(r, "ad_step", None):
                seen.append(r.ad_step)
            on_record(r)

        with real(record):
            yield

    return listening
