"""Stage 3: the Latent-Guided Refiner (network in ``repackctl.refine.network``)."""
