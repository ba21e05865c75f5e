"""torch.export capture of HF models: capture.py (the export call), patches.py (the patch registry), library/."""
