"""`ad bench`: workloads, the timed runs of our engine and the Hugging Face baselines, metrics and result files."""
