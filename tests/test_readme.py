"""The README stays true: its feature table is regenerated, its usage example runs."""

from __future__ import annotations

import re
from pathlib import Path

from attnzoo.docs import main as docs_main
from attnzoo.docs import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_feature_table_is_current() -> None:
    text = README.read_text()
    assert render(text) == text, "README feature table is stale: run `make readme`"
    assert docs_main(["--check", str(README)]) == 0


def test_stale_table_is_detected(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.read_text().replace("| `softmax` |", "| `softmax-old` |"))
    assert docs_main(["--check", str(stale)]) == 1


def test_usage_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_commands_named_in_readme_exist() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^run:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
