"""Static offline HTML report from the store, as linked pages (``index.html`` first: how far
to trust the numbers and which mechanism to use). Never imports torch.

Besides the page, the CLI's result tables use :func:`cp_case_rows` (one row per context-parallel
case, ranks folded) and :func:`quality_point` (a quality row's task point, as the report names it).
"""

from attnzoo.extras import require

require("bench", "attnzoo.report (the HTML report and its plots)", ("duckdb", "matplotlib"))

# isort: split
# ruff: noqa: E402  (the extra is checked before its packages are imported)
from attnzoo.report.cp import group_cases, summarise
from attnzoo.report.html import Report, build_report, write_report
from attnzoo.report.quality_rows import point_label, task_infos

__all__ = ["Report", "build_report", "cp_case_rows", "quality_point", "write_report"]


def cp_case_rows(rows: list[dict]) -> list[tuple[tuple, dict]]:
    """Context-parallel rows folded per case: ``((strategy, mask, T, mode, world), summary)``."""
    return [(key, summarise(rs)) for key, rs in group_cases(rows).items()]


def quality_point(row: dict, described: list[dict]) -> str:
    """``"mqar L=256, kv=16"``: a quality row's task and the settings naming its point, from the
    task descriptions its run stored (``Store.tasks``): the task's point keys, and the settings
    in which its points in that run differ (as the report's tables name them)."""
    import json

    info = task_infos(described).get((row["run_id"], row["task"], row["task_config"]))
    if info is None or not row.get("task_config"):
        return row["task"]
    cfg = json.loads(row["task_config"])
    others = [json.loads(d["task_config"]) for d in described
              if (d["run_id"], d["task"]) == (row["run_id"], row["task"])]  # fmt: skip
    keys = [k for k, _ in info.point_keys if k in cfg]
    keys += sorted(
        k for k in cfg if k not in keys and len({json.dumps(o.get(k)) for o in others}) > 1
    )
    label = point_label(cfg, keys, dict(info.point_keys))
    return f"{row['task']} {label}" if label else row["task"]
