"""ad: deploy a Hugging Face causal LM for fast inference, automatically.

Importing this package is cheap on purpose: `ad --help` must not import torch.
"""
