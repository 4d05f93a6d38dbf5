"""The README stays true: its feature table is regenerated, its usage example runs."""

from __future__ import annotations

import re
from pathlib import Path

from attnzoo.readme_table import HEAD, SPEED_COL, is_current, render, speed_column
from attnzoo.readme_table import main as docs_main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_feature_table_is_current() -> None:
    text = README.read_text()
    assert is_current(text), "README feature table is stale: run `make readme`"
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


def test_speed_column_comes_from_the_store(tmp_path: Path) -> None:
    from attnzoo.bench.speed import run_speed
    from attnzoo.bench.speed_suites import SpeedSuite
    from attnzoo.store import Store

    db = tmp_path / "s.duckdb"
    suite = SpeedSuite(mixers=("softmax", "sigmoid"), seq_lens=(1024,), patterns=("causal-self",), masks=(), modes=("fwd",), repeats=1,
                       warmup=0, heads=2, head_dim=8)  # fmt: skip
    run = run_speed(suite, Store(db), command="t", progress=False)
    speed = speed_column(db)
    assert set(speed) == {"softmax", "sigmoid"} and "1.00x softmax" in speed["softmax"]
    assert f"run {run}" in speed["sigmoid"]
    page = render(README.read_text(), speed)
    assert is_current(page) and speed["sigmoid"] in page
    assert speed_column(tmp_path / "missing.duckdb") == {}


def test_speed_column_prefers_a_forward_peer_ratio_to_a_newer_training_one(tmp_path: Path) -> None:
    """The speed cell is about the forward pass: a newer run of only '-train' cases does not
    replace a mechanism's forward ratio; a mechanism with only a training ratio shows it, marked."""
    from attnzoo.bench.peers import PeerPlan, run_peers
    from attnzoo.store import Store

    store = Store(tmp_path / "p.duckdb")
    fast = {"sizes": (192,), "repeats": 1, "warmup": 0, "memory": False}
    first = run_peers(PeerPlan(name="custom", cases=("linear-native/fla-naive-chunk",), **fast),
                      store, progress=False)  # fmt: skip
    train = (
        "linear-native-train/fla-naive-chunk",
        "lightning-native-train/fla-naive-chunk-simple-gla",
    )
    second = run_peers(PeerPlan(name="custom", cases=train, **fast), store, progress=False)
    speed = speed_column(tmp_path / "p.duckdb")
    assert "(linear-native) at B=1 T=192" in speed["linear"] and f"(run {first})" in speed["linear"]
    assert "(lightning-native-train, fwd+bwd) at B=1 T=192" in speed["lightning"]
    assert f"(run {second})" in speed["lightning"]


def test_rewriting_without_a_store_keeps_the_measured_cells() -> None:
    """`make readme` in a checkout without attnzoo.duckdb: every speed cell the README had stays."""
    text = README.read_text()
    page = render(text, {})
    for line in text.splitlines():
        cells = line.strip("|").split(" | ")
        if line.startswith("| `") and len(cells) == len(HEAD) and "not measured yet" not in line:
            assert f" | {cells[SPEED_COL]} | " in page, cells[0]
