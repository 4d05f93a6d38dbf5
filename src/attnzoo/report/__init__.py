"""Static offline HTML report from the store. Never imports torch."""

from attnzoo.report.html import build_report, write_report

__all__ = ["build_report", "write_report"]
