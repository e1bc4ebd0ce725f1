"""Stage 1: the packing autoencoder (projection C → d, pixel decoder), PCA baseline and losses.

Import from the submodules (``repackctl.pack.autoencoder`` …); nothing heavy is imported here.
"""
