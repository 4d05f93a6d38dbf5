"""Results store (DuckDB). The only package that speaks SQL. Needs the ``[bench]`` extra."""

from attnzoo.extras import require

require("bench", "attnzoo.store (the DuckDB results store)", ("duckdb",))

# isort: split
# ruff: noqa: E402  (the extra is checked before its packages are imported)
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
