"""ListOps generator: labels against an independent evaluator, bounds, and LRA's statistics."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from attnzoo.tasks import listops
from attnzoo.tasks.listops import ListOpsConfig

# the token strings LRA writes (parentheses already stripped, as its input pipeline does)
OPS = ("[MIN", "[MAX", "[MED", "[SM")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens(ids: torch.Tensor) -> list[str]:
    return listops.decode(ids).split()


def evaluate(tokens: list[str]) -> int:
    """Stack evaluator, written independently of the generator's recursion."""
    stack: list[tuple[str, list[int]]] = [("ROOT", [])]
    for tok in tokens:
        if tok in OPS:
            stack.append((tok, []))
        elif tok == "]":
            op, args = stack.pop()
            assert len(args) >= 2, f"operator {op} with {len(args)} args"
            if op == "[MIN":
                value = min(args)
            elif op == "[MAX":
                value = max(args)
            elif op == "[SM":
                value = sum(args) % 10
            else:  # int(np.median(args)): mean of the two middle values, truncated
                s = sorted(args)
                k = len(s)
                value = s[k // 2] if k % 2 else int((s[k // 2 - 1] + s[k // 2]) / 2)
            stack[-1][1].append(value)
        else:
            stack[-1][1].append(int(tok))
    assert len(stack) == 1 and len(stack[0][1]) == 1, "unbalanced expression"
    return stack[0][1][0]


def nesting(tokens: list[str]) -> int:
    depth = best = 0
    for tok in tokens:
        depth += tok in OPS
        depth -= tok == "]"
        best = max(best, depth)
    return best


def arg_counts_of(tokens: list[str]) -> list[int]:
    """Number of arguments of every operator, in closing order."""
    stack: list[int] = []
    counts: list[int] = []
    for tok in tokens:
        if stack and tok != "]":
            stack[-1] += 1
        if tok in OPS:
            stack.append(0)
        elif tok == "]":
            counts.append(stack.pop())
    return counts


def lra_reference(cfg: ListOpsConfig, n: int, seed: int) -> list[list[str]]:
    """LRA's generate_tree + length filter, re-implemented plainly with Python's random."""
    rng = random.Random(seed)

    def tree(depth: int) -> list[str]:
        r = rng.random() if depth < cfg.max_depth else 1.0
        if r > 0.25:
            return [str(rng.choice(range(10)))]
        children = [tree(depth + 1) for _ in range(rng.randint(2, cfg.max_args))]
        return [rng.choice(OPS), *(t for c in children for t in c), "]"]

    out: list[list[str]] = []
    while len(out) < n:
        t = tree(1)
        if cfg.min_length < len(t) < cfg.max_length:
            out.append(t)
    return out


@pytest.fixture(scope="module")
def big_batch() -> listops.Batch:
    return listops.make_batch(ListOpsConfig(), 3000, _gen(11))


def test_vocabulary() -> None:
    assert listops.VOCAB[listops.PAD_ID] == "<pad>"
    assert listops.VOCAB_SIZE == 16 == len(set(listops.VOCAB))
    assert listops.VOCAB[1:11] == tuple(str(d) for d in range(10))


def test_same_seed_same_batch_different_seed_differs() -> None:
    cfg = ListOpsConfig()
    a, b = listops.make_batch(cfg, 16, _gen(1)), listops.make_batch(cfg, 16, _gen(1))
    c = listops.make_batch(cfg, 16, _gen(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_shapes_dtypes_and_padding() -> None:
    cfg = ListOpsConfig(max_length=40, min_length=8)
    batch = listops.make_batch(cfg, 32, _gen(0))
    assert batch.inputs.shape == batch.mask.shape == (32, 40)
    assert batch.targets.shape == (32,)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert batch.mask.dtype == torch.bool
    for x, m, n in zip(batch.inputs, batch.mask, batch.lengths, strict=True):
        assert m[:n].all() and not m[n:].any()  # right padding only
        assert (x[n:] == listops.PAD_ID).all() and (x[:n] != listops.PAD_ID).all()


def test_labels_match_independent_evaluator(big_batch: listops.Batch) -> None:
    for x, y in zip(big_batch.inputs, big_batch.targets.tolist(), strict=True):
        assert evaluate(_tokens(x)) == y
    assert set(big_batch.targets.tolist()) == set(range(10))


def test_evaluator_on_hand_examples() -> None:
    assert evaluate("[MAX 2 9 [MIN 4 7 ] 0 ]".split()) == 9
    assert evaluate("[MED 1 2 3 4 ]".split()) == 2  # (2 + 3) / 2 truncated
    assert evaluate("[SM 9 8 [MED 7 1 5 ] ]".split()) == 2
    assert evaluate("[MIN 3 [MAX 1 2 ] ]".split()) == 2


def test_length_and_depth_bounds(big_batch: listops.Batch) -> None:
    cfg = ListOpsConfig()
    lengths = big_batch.lengths
    assert (lengths > cfg.min_length).all() and (lengths < cfg.max_length).all()
    depths = Counter(nesting(_tokens(x)) for x in big_batch.inputs)
    assert max(depths) == cfg.max_depth - 1  # operators nest at most max_depth - 1 deep
    arg_counts = Counter(n for x in big_batch.inputs for n in arg_counts_of(_tokens(x)))
    assert min(arg_counts) == 2 and max(arg_counts) == cfg.max_args


def test_operator_and_digit_frequencies_are_uniform(big_batch: listops.Batch) -> None:
    # operator and leaf choices do not affect the length, so the filter leaves them uniform
    tokens = Counter(t for x in big_batch.inputs for t in _tokens(x))
    ops = torch.tensor([tokens[op] for op in OPS], dtype=torch.float64)
    digits = torch.tensor([tokens[str(d)] for d in range(10)], dtype=torch.float64)
    assert tokens["]"] == ops.sum()
    for counts in (ops, digits):
        expected = counts.sum() / counts.numel()
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        df = counts.numel() - 1
        assert chi2 < df + 6 * (2 * df) ** 0.5


def test_unfiltered_node_law() -> None:
    # bounds that reject nothing (longest tree 2 + 4 * (2 + 4) = 26 < 64) expose LRA's node law:
    # root is an operator w.p. 0.25, an operator has 2..max_args args uniformly, and a node one
    # level down is again an operator w.p. 0.25; at max_depth it is always a digit
    cfg = ListOpsConfig(max_depth=3, max_args=4, min_length=0, max_length=64)
    assert cfg.longest_tree() == 26
    n = 20000
    batch = listops.make_batch(cfg, n, _gen(12))
    trees = [_tokens(x) for x in batch.inputs]
    roots = [t for t in trees if len(t) > 1]
    assert abs(len(roots) / n - 0.25) < 0.015  # sd ~ 0.003
    root_args = Counter(arg_counts_of(t)[-1] for t in roots)
    assert set(root_args) == {2, 3, 4}
    for k in (2, 3, 4):
        assert abs(root_args[k] / len(roots) - 1 / 3) < 0.04
    children = sum(root_args[k] * k for k in root_args)
    inner_ops = sum(len(arg_counts_of(t)) - 1 for t in roots)
    assert abs(inner_ops / children - 0.25) < 0.02  # sd ~ 0.004
    assert max(nesting(t) for t in trees) == 2


def test_length_and_depth_distribution_match_lra_reference(big_batch: listops.Batch) -> None:
    # same law as a plain re-implementation of LRA's generator: mean length and depth mix
    ref = lra_reference(ListOpsConfig(), 3000, seed=0)
    ref_len = torch.tensor([len(t) for t in ref], dtype=torch.float64)
    ours_len = big_batch.lengths.double()
    # standard error of a difference of means ~ 14 * sqrt(2 / 3000) ~ 0.36
    assert abs(float(ours_len.mean() - ref_len.mean())) < 1.5
    assert abs(float(ours_len.std() - ref_len.std())) < 1.5
    ref_deep = sum(nesting(t) == 3 for t in ref) / len(ref)
    ours_deep = sum(nesting(_tokens(x)) == 3 for x in big_batch.inputs) / len(big_batch.inputs)
    assert abs(ours_deep - ref_deep) < 0.03
    ref_args = [n for t in ref for n in arg_counts_of(t)]
    ours_args = [n for x in big_batch.inputs for n in arg_counts_of(_tokens(x))]
    assert abs(sum(ours_args) / len(ours_args) - sum(ref_args) / len(ref_args)) < 0.15
    ref_labels = torch.bincount(torch.tensor([evaluate(t) for t in ref]), minlength=10)
    ours_labels = torch.bincount(big_batch.targets, minlength=10)
    assert (ref_labels - ours_labels).abs().max() / 3000 < 0.04


def test_metric_and_loss() -> None:
    targets = torch.tensor([3, 1, 4, 1, 5])
    assert listops.metric(targets, targets) == 1.0
    logits = torch.nn.functional.one_hot(torch.tensor([3, 1, 4, 0, 0]), 10).float()
    assert listops.metric(logits, targets) == pytest.approx(0.6)
    assert listops.loss(logits * 50, torch.tensor([3, 1, 4, 0, 0])).item() < 1e-6
    with pytest.raises(ValueError, match=r"logits \[B, 10\]"):
        listops.metric(logits[:3], targets)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"max_depth": 1}, ValueError, "max_depth must be >= 2, got 1"),
        ({"max_args": 1}, ValueError, "max_args must be >= 2, got 1"),
        ({"min_length": -1}, ValueError, "min_length must be >= 0, got -1"),
        ({"max_length": 4}, ValueError, "max_length must be >= 5, got 4"),
        ({"min_length": 20, "max_length": 21}, ValueError, "max_length must be > .* = 21"),
        ({"max_depth": 2, "max_args": 3, "min_length": 5}, ValueError, "min_length must be < 5"),
        ({"max_depth": 4.0}, TypeError, "max_depth must be an int, got 4.0"),
    ],
)
def test_config_errors(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        ListOpsConfig(**kwargs)


def test_make_batch_errors() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        listops.make_batch(ListOpsConfig(), 0, _gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        listops.make_batch(ListOpsConfig(), 1, 3)  # type: ignore[arg-type]
    # feasible in principle (length 5 needs 3 args at depth 2) but made hopeless by max_tries
    hard = ListOpsConfig(max_depth=2, max_args=3, min_length=4, max_length=6)
    with pytest.raises(RuntimeError, match="no tree with 4 < length < 6 in 1 draws"):
        listops.make_batch(hard, 50, _gen(0), max_tries=1)
