"""lm-evaluation-harness model `autodeploy`: loglikelihood, loglikelihood_rolling and generate_until through the
in-process engine (continuous batching: every request of a call goes to the engine at once).

    lm_eval --model autodeploy --model_args model=meta-llama/Llama-3.1-8B-Instruct,world_size=2 --tasks mmlu

`model_args` take any `ad` config key (dotted keys too: `model_kwargs.num_hidden_layers=2`), plus `config` (YAML
files, `;`-separated) and `max_gen_toks`. lm-eval's own `batch_size` is accepted and ignored (the engine batches);
`device` maps to ad's `device`. A continuation is scored from the prompt logprobs of context + continuation (one
forward, like HF's), with one generated token the engine needs anyway.
"""

from __future__ import annotations

from typing import Any, Optional

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from autodeploy_cli.llm import LLM
from autodeploy_cli.runtime.request import SamplingParams


@register_model("autodeploy")
class AutoDeployLM(TemplateLM):
    def __init__(self, model: Optional[str] = None, pretrained: Optional[str] = None, config: Optional[str] = None,
                 max_gen_toks: int = 256, add_bos_token: bool = False, **kwargs: Any):
        super().__init__()
        kwargs.pop("batch_size", None)  # lm-eval's: the engine batches continuously
        if kwargs.get("max_batch_size") is None:
            kwargs.pop("max_batch_size", None)
        if kwargs.get("device") is None:
            kwargs.pop("device", None)
        files = [f for f in (config or "").split(";") if f]
        self.llm = LLM(model or pretrained, config_files=files, **kwargs)
        self.engine = self.llm.engine
        self.tokenizer = self.engine.tokenizer
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = bool(add_bos_token)

    # --- tokens ------------------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return int(eos) if eos is not None else min(self.engine.eos_token_ids, default=0)

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.engine.max_seq_len - 1  # one generated token must still fit

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "autodeploy").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return list(self.tokenizer(string, add_special_tokens=special)["input_ids"])

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # --- scoring -----------------------------------------------------------------------------------------------------
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of continuation logprobs, whether every continuation token is the argmax) per (context, cont)."""
        prompts, lens = [], []
        for ctx, cont in pairs:
            whole = (list(ctx) + list(cont))[-(self.max_length):]  # left-truncate to the context window
            prompts.append(whole)
            lens.append(min(len(cont), len(whole) - 1))
        sp = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False, prompt_logprobs=1)
        out = []
        for comp, n in zip(self.engine.generate(prompts, sp), lens):
            if comp.error:
                raise RuntimeError(f"ad could not score a request: {comp.error}")
            tail = comp.prompt_logprobs[len(comp.prompt_logprobs) - n:]
            out.append((sum(e.logprob for e in tail), all(e.top and e.top[0][0] == e.token_id for e in tail)))
        return out

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
        results = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, results):
            if key is not None and self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            rolling = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(string, add_special_tokens=False),
                                                         prefix_token=self.prefix_token_id,
                                                         max_seq_len=self.max_length, context_len=1)
            for w in map(lm_utils.make_disjoint_window, rolling):
                windows.append(w)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, self._score(windows)):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # --- generation --------------------------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        prompts, params = [], []
        for req in requests:
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []  # EOS ends a request in the engine already
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(kw.pop("max_gen_toks", self.max_gen_toks))
            sample = kw.pop("do_sample", False) or float(kw.get("temperature", 0.0) or 0.0) > 0
            ids = self.tok_encode(context)[-(self.engine.max_seq_len - max_tokens):]
            params.append(SamplingParams(max_tokens=max_tokens, temperature=float(kw.get("temperature", 1.0))
                                         if sample else 0.0, top_p=float(kw.get("top_p", 1.0) or 1.0),
                                         stop=[s for s in until if s], seed=kw.get("seed")))
            prompts.append(ids)
        outs = []
        for req, comp in zip(requests, self.engine.generate(prompts, params)):
            if comp.error:
                raise RuntimeError(f"ad could not generate for a request: {comp.error}")
            outs.append(comp.text)
            self.cache_hook.add_partial("generate_until", req.args, comp.text)
        return outs
