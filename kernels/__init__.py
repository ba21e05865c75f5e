"""Backend implementations of the canonical ops: torch/ (reference, CPU and GPU), triton/, flashinfer/.

Deliberately inert: no `__version__` and no transformers import, because transformers probes for a third-party
package named `kernels` and must not mistake this one for it. Backends are imported by name through
the backend table `autodeploy_cli.ops.backends`, never by transforms directly.
"""
