"""Graph transforms: one file per transform, the file name is the registered name.

Modules register themselves when `autodeploy_cli.pipeline.registry.discover()` imports them. Nothing heavy happens
at package import (transformers probes for third-party packages; ours must stay inert).
"""
