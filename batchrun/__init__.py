"""batchrun: run large batches of prompts through hosted LLM APIs, every row once, at the provider's rate.

The Python API (`run`, `arun`, `final_records`, `results`, `failures`) is in `batchrun.api`, loaded on first use so
that importing a small part of the package stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["arun", "failures", "final_records", "results", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
