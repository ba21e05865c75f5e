"""`python -m autodeploy_cli.eval ARGS`: lm-eval's command line with the `autodeploy` model registered (works
without the installed .pth hook, e.g. from a checkout with PYTHONPATH)."""

from autodeploy_cli.eval.plugin import install

if __name__ == "__main__":
    install()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
