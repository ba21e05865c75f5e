"""Registers the `autodeploy` model with lm-eval, so `lm_eval --model autodeploy` works once ad is installed.

lm-eval (0.4.x) has no plugin entry points: it registers its own models when `lm_eval.models` is imported. The
installed `autodeploy_lm_eval.pth` calls `install()` at interpreter start; that only puts a finder on
sys.meta_path which, when `lm_eval.models` is imported, lets it load and then adds `autodeploy` as a lazy entry
(`autodeploy_cli.eval.lm_eval_model:AutoDeployLM`, imported only when that model is asked for). Nothing else is
imported at start-up, and every failure here is swallowed: a broken hook must never break Python.
"""

from __future__ import annotations

import sys
from typing import Any

TARGET = "lm_eval.models"
ENTRY = "autodeploy_cli.eval.lm_eval_model:AutoDeployLM"


def register() -> None:
    try:
        from lm_eval.api.registry import model_registry

        if "autodeploy" not in model_registry:
            model_registry.register("autodeploy", target=ENTRY)
    except Exception:  # noqa: BLE001 - an lm-eval without this registry: `python -m autodeploy_cli.eval` still works
        pass


class _Finder:
    """Finds nothing itself: wraps the real loader of `lm_eval.models` so `register()` runs right after it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                real = spec.loader.exec_module

                def exec_module(module: Any, _real: Any = real) -> None:
                    _real(module)
                    register()

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


def install() -> None:
    try:
        if TARGET in sys.modules:
            register()
        elif not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
    except Exception:  # noqa: BLE001 - see the module docstring
        pass
