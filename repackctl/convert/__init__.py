"""Import of official checkpoints (RePack then Refine) into repackctl runs."""
