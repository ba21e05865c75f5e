"""lm-eval on the tiny model with a task defined here from a local JSON file (no network): the `autodeploy` model
(in-process engine) and `local-completions` against `ad serve` give the same loglikelihoods, equal to HF's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval", reason="the eval extra is not installed: pip install -e '.[eval]'")

from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.models.factory import ModelFactory  # noqa: E402
from tests.serve.conftest import ROOT  # noqa: E402

DOCS = [
    {"question": "The sky is", "choices": [" blue", " green", " made of cheese"], "answer": 0},
    {"question": "Two plus two equals", "choices": [" four", " five"], "answer": 0},
    {"question": "Paris is the capital of", "choices": [" France", " Spain", " Mars"], "answer": 0},
    {"question": "Water boils at a hundred degrees", "choices": [" Celsius", " Kelvin"], "answer": 0},
]
TASK = """task: ad_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def _task_manager(tmp_path):
    from lm_eval.tasks import TaskManager

    data = tmp_path / "docs.json"
    data.write_text(json.dumps(DOCS))
    (tmp_path / "ad_tiny_choice.yaml").write_text(TASK.format(data=data))
    return TaskManager(include_path=str(tmp_path))


def _loglikelihoods(result) -> list[tuple[tuple[str, str], float, bool]]:
    out = []
    for sample in result["samples"]["ad_tiny_choice"]:
        for args, resp in zip(sample["arguments"], sample["resps"]):
            out.append(((args[0], args[1]), float(resp[0][0]), bool(resp[0][1])))
    return out


@pytest.fixture(scope="module")
def ad_lm(served):
    from lm_eval.api.registry import get_model

    from autodeploy_cli.eval import plugin

    plugin.install()  # what the installed autodeploy_lm_eval.pth does at start-up
    cls = get_model("autodeploy")
    assert cls.__name__ == "AutoDeployLM"
    # model_args as lm-eval hands them over (any ad config key), plus lm-eval's own batch_size / device
    return cls.create_from_arg_obj(dict(o.split("=", 1) for o in served[1]), {"batch_size": 4, "device": None})


def test_autodeploy_and_local_completions_equal_hf(served, ad_lm, tmp_path, monkeypatch):
    from lm_eval import simple_evaluate

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    server, overrides = served
    name = overrides[0].split("=", 1)[1]
    tm = _task_manager(tmp_path)
    lm = ad_lm
    ours = _loglikelihoods(simple_evaluate(model=lm, tasks=["ad_tiny_choice"], task_manager=tm, log_samples=True))
    remote = simple_evaluate(model="local-completions", tasks=["ad_tiny_choice"], task_manager=tm, log_samples=True,
                             model_args=f"base_url={server.url}/v1/completions,model={name},"
                                        "tokenizer_backend=remote,max_length=64")
    theirs = _loglikelihoods(remote)
    assert len(ours) == len(theirs) == 10
    assert [k for k, _, _ in ours] == [k for k, _, _ in theirs]
    assert [lp for _, lp, _ in ours] == pytest.approx([lp for _, lp, _ in theirs], abs=1e-4)
    assert [g for _, _, g in ours] == [g for _, _, g in theirs]
    # HF eager on the same seeded weights, the same tokens (lm-eval's context/continuation split)
    hf = ModelFactory(resolve([], overrides)).materialize()
    for (ctx, cont), lp, _ in ours:
        ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
        with torch.no_grad():
            logits = hf(torch.tensor([ctx_ids + cont_ids])).logits[0].float()
        ref = torch.log_softmax(logits, -1)[len(ctx_ids) - 1:-1].gather(1, torch.tensor(cont_ids)[:, None]).sum()
        assert lp == pytest.approx(ref.item(), abs=1e-4)


def test_rolling_and_generate_until(ad_lm):
    from lm_eval import utils
    from lm_eval.api.instance import Instance

    from autodeploy_cli.runtime.request import SamplingParams

    lm = ad_lm
    text = "the quick brown fox jumps over the lazy dog " * 3  # 132 bytes: several 63-token windows
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    ids = lm.tok_encode(text, add_special_tokens=False)
    windows = list(map(utils.make_disjoint_window, utils.get_rolling_token_windows(ids, lm.prefix_token_id,
                                                                                    lm.max_length, 1)))
    assert len(windows) >= 3
    assert sum(lp for lp, _ in lm._score(windows)) == pytest.approx(rolling) and rolling < 0
    gen = lm.generate_until([Instance("generate_until", {}, ("hello", {"until": ["\n"], "max_gen_toks": 5}), 0)])
    want = lm.engine.generate([lm.tok_encode("hello")], SamplingParams(max_tokens=5, stop=["\n"]))[0].text
    assert gen == [want]


def test_lm_eval_cli_knows_autodeploy_through_the_hook():
    """The .pth line, run as Python runs it at start-up, makes lm-eval's registry list `autodeploy`."""
    line = (ROOT / "autodeploy_cli" / "eval" / "autodeploy_lm_eval.pth").read_text().strip()
    code = f"{line}\nfrom lm_eval.api.registry import get_model\nprint(get_model('autodeploy').__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "AutoDeployLM", out.stderr[-2000:]
