"""Generation: plans, per-index seeds, guided sampling, and the samples-folder format."""
