"""Command-specific settings sections (one module per command group, pydantic only).

Kept apart from ``settings.py`` so each stage owns its section; ``settings.Settings`` nests them
(``[pack]`` in TOML, ``REPACKCTL_PACK__STEPS`` in the environment).
"""
