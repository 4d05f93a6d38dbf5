"""Results store (DuckDB). The only package that speaks SQL."""

from attnzoo.store.store import (
    DEFAULT_DB,
    ENV_DB,
    RunInProgressError,
    Store,
    StoreBusyError,
    StoreDamagedError,
    StoreError,
    default_path,
)

__all__ = [
    "DEFAULT_DB", "ENV_DB", "RunInProgressError", "Store", "StoreBusyError", "StoreDamagedError",
    "StoreError", "default_path",
]  # fmt: skip
