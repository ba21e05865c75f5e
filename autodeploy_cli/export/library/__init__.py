"""Export patches, one per file (file name == patch name); `patches.py` imports them all on first use."""
