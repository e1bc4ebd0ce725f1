"""Names of the files the training engine writes into a run folder besides its checkpoints.

Its own module, free of imports, so that the engine (``repackctl.train``) and the path helpers
(``repackctl.paths``, which the settings layer imports without torch) share one definition
without importing each other.
"""

from __future__ import annotations

CONFIG_HISTORY = "config_history.jsonl"  # a run's replaced configs and allowed changes
