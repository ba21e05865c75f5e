"""lm-evaluation-harness integration: the `autodeploy` model (lm_eval_model.py) and the hook that registers it
when lm-eval loads its models (plugin.py, run from the installed `autodeploy_lm_eval.pth`)."""
