"""batchrun on Ray: one job across many machines under one shared limit (`submit --ray`), and `map_rows` for
pipelines that are Ray Datasets already. Needs the extra: pip install 'batchrun[ray]'."""

from __future__ import annotations

from .data import map_rows

__all__ = ["map_rows"]
