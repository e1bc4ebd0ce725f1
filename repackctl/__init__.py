"""repackctl: train Diffusion Transformers on packed features of frozen vision foundation models.

Importing the package is cheap on purpose: nothing heavy (torch, zarr, timm) is imported here.
"""

__version__ = "0.1.0"
