"""Example repackctl plugin: extra encoders registered through entry points."""

__version__ = "0.1.0"
