"""Plain-torch backends of the canonical ops (reference kernels; run on CPU and GPU)."""
