"""State passing for linear attention, Lightning and GLA on spawned gloo workers (fwd + bwd).

One spawn per world size runs every kind x combine x normalisation case on contiguous shards
(uneven lengths included); the parent unshards the local outputs and gradients and compares them
with the single-process ops on the full sequence. Lightning's replicated ``decay`` gets a partial
gradient on every rank: their sum must equal the single-process gradient. Counted bytes must
equal :func:`state_passing_bytes`. A few single-process tests check the prefix algebra directly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from attnzoo.distributed import Sharding, run_workers, unshard
from attnzoo.distributed.state_passing import (
    _gla_query_decay,
    _gla_shard_state,
    prefix_states,
    state_passing_bytes,
)
from attnzoo.ops.gla import gated_linear_attention
from attnzoo.ops.linear import linear_attention
from tests.distributed import ulysses_state_workers as W

LENGTHS = {2: 13, 3: 20, 4: 18}  # uneven contiguous shards


def cases_for(P: int) -> list[W.StateCase]:
    T = LENGTHS[P]
    out = []
    for combine in ("allgather", "sequential"):
        out += [
            W.StateCase("linear", T, combine),
            W.StateCase("linear", T, combine, normalize=True, H=4, Hkv=2),  # GQA
            W.StateCase("linear", T, combine, decay=True),
            W.StateCase("linear", T, combine, decay=True, normalize=True),
            W.StateCase("gated", T, combine),
            W.StateCase("gated", T, combine, impl="recurrent"),
        ]
    out += [
        W.StateCase("linear", T, causal=False),
        W.StateCase("linear", T, causal=False, normalize=True, H=4, Hkv=2),
        W.StateCase("linear", T, decay=True, impl="reference", chunk_size=64),
    ]
    if P == 2:
        # long shards with strong gates: cumulative log gates reach about -1000 on each shard
        out += [
            W.StateCase("gated", 512, combine, B=1, H=1, Hkv=1, K=2, V=2, gate=5.0, chunk_size=64)
            for combine in ("allgather", "sequential")
        ]
    return [W.StateCase(**{**c.__dict__, "seed": 10 * i}) for i, c in enumerate(out)]


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda p: f"world{p}")
def world(request: pytest.FixtureRequest) -> tuple[int, list[W.StateCase], list[Any]]:
    P = request.param
    cases = cases_for(P)
    return P, cases, run_workers(W.state_suite, P, cases, timeout=240)


def _name(c: W.StateCase) -> str:
    mode = "causal" if c.causal else "noncausal"
    kind = c.kind + ("+decay" if c.decay else "")
    return f"{kind}/{c.combine}/{mode}/norm={c.normalize}/T={c.T}/Hkv={c.Hkv}/{c.impl}"


def reference(c: W.StateCase) -> dict[str, torch.Tensor]:
    """Single-process output and gradients on the whole sequence, in float64 (so that the fp32
    sharded results are measured against the exact values, not another path's rounding)."""
    xs = {n: t.double() for n, t in c.inputs().items()}
    g = xs.pop("g")
    leaves = {n: t.clone().requires_grad_(True) for n, t in xs.items()}
    q, k, v = leaves["q"], leaves["k"], leaves["v"]
    if c.kind == "gated":
        # reference is quadratic in T: take the chunked path for the long case
        impl = "reference" if c.T <= 64 else "chunk"
        o = gated_linear_attention(q, k, v, leaves["gk"], impl=impl)
    else:
        o = linear_attention(
            q,
            k,
            v,
            causal=c.causal,
            decay=leaves.get("decay"),
            normalize=c.normalize,
            impl="reference",
        )
    (o * g).sum().backward()
    return {"out": o.detach(), **{n: t.grad for n, t in leaves.items()}}


def test_matches_single_process(world: tuple[int, list[W.StateCase], list[Any]]) -> None:
    P, cases, results = world
    failures, worst = [], 0.0
    for i, case in enumerate(cases):
        sh = Sharding("contiguous", case.T, P)
        want = reference(case)
        local = [results[r]["results"][i] for r in range(P)]
        got = {"out": unshard([rk[0] for rk in local], sh)}
        for name in want:
            if name == "decay":  # replicated: per-rank partial gradients sum to the total
                got[name] = sum(rk[1][name] for rk in local)
            elif name != "out":
                got[name] = unshard([rk[1][name] for rk in local], sh)
        for name, w in want.items():
            scale = max(1.0, w.abs().max().item())  # raw sums over T tokens reach ~1e2
            err = (got[name].double() - w).abs().max().item() / scale
            worst = max(worst, err)
            # fp32 GLA with strong gates in chunks of 64: within-chunk factors reach e^{+-30}
            # (errors seen up to 1.1e-6 against float64, 3e-6 for the unsharded fp32 chunk path)
            if not err < 5e-6:
                failures.append(
                    f"{_name(case)} {name}: max error {err:.2e} (relative to {scale:.1f})"
                )
    assert not failures, "\n".join(failures)


def test_counted_bytes_equal_analytic(world: tuple[int, list[W.StateCase], list[Any]]) -> None:
    P, cases, results = world
    for i, c in enumerate(cases):
        kw: dict[str, Any] = dict(
            batch=c.B, num_heads=c.H, head_dim=c.K, v_head_dim=c.V, kind=c.kind, combine=c.combine
        )
        kw.update(decay=c.decay)
        kw.update(causal=c.causal, normalize=c.normalize)
        fwd = state_passing_bytes(P, **kw)
        total = state_passing_bytes(P, backward=True, **kw)
        counted = [tuple(results[r]["results"][i][2:]) for r in range(P)]
        assert counted == list(zip(fwd, total, strict=True)), _name(c)
        assert max(fwd) > 0


def test_rejects_bad_arguments(world: tuple[int, list[W.StateCase], list[Any]]) -> None:
    P, _, results = world
    errors = results[0]["errors"]
    for msg, kind in zip(errors[:2], ("zigzag", "striped"), strict=True):
        assert msg.startswith("ValueError") and "must be 'contiguous'" in msg and kind in msg
    assert errors[2].startswith("ValueError") and "holds 5 tokens" in errors[2]
    assert errors[3].startswith("ValueError") and "'tree'" in errors[3] and "combine" in errors[3]
    assert errors[4].startswith("ValueError") and "'mamba'" in errors[4]
    assert errors[5].startswith("ValueError") and "decay must have shape [H]=[2]" in errors[5]
    assert errors[6].startswith("ValueError") and "gk of k's shape" in errors[6]
    assert errors[7].startswith("ValueError") and "causal=False" in errors[7]
    assert errors[8].startswith("ValueError") and "is now kind='linear' with decay=" in errors[8]
    assert errors[9].startswith("ValueError") and "is now kind='gated' with gk=" in errors[9]


# ---- single process: the algebra ------------------------------------------------------------
def test_prefix_of_gla_shards_is_exact_and_finite_for_strong_gates() -> None:
    """Shards of a 3000-token sequence with gates near -8 per step: only exponents <= 0 are
    taken, so the pieces stay finite, and they reassemble the single-process output."""
    B, T, H, K, V = 1, 3000, 1, 2, 2
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    gk = F.logsigmoid(torch.randn(B, T, H, K, generator=g)) * 8  # cumulative sum ~ -1e4
    cuts = [0, 1100, 1101, 2400, T]
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    pieces = [_gla_shard_state(k[:, a:b], v[:, a:b], gk[:, a:b]) for a, b in spans]
    states, log_as = [p[0] for p in pieces], [p[1] for p in pieces]
    entering = prefix_states(states, list(log_as))
    outs = []
    for (a, b), s_in in zip(spans, entering, strict=True):
        local = gated_linear_attention(q[:, a:b], k[:, a:b], v[:, a:b], gk[:, a:b])
        qd = _gla_query_decay(q[:, a:b], gk[:, a:b]) * K**-0.5
        outs.append(local + torch.einsum("bthk,bhkv->bthv", qd, s_in))
    got = torch.cat(outs, dim=1)
    want = gated_linear_attention(q, k, v, gk, impl="recurrent")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_prefix_states_recurrence() -> None:
    s = [torch.full((1, 1, 1, 1), float(i + 1)) for i in range(3)]
    log_a = [torch.log(torch.tensor([0.5])) for _ in range(3)]  # per-head decay 0.5
    got = [t.item() for t in prefix_states(s, log_a)]
    assert got == pytest.approx([0.0, 1.0, 0.5 * 1.0 + 2.0])


def test_state_passing_bytes_values() -> None:
    # one state: B=1, H=2, K=3, V=4 -> 24 floats = 96 bytes
    kw: dict[str, Any] = dict(batch=1, num_heads=2, head_dim=3, v_head_dim=4)
    assert state_passing_bytes(4, kind="linear", combine="sequential", **kw) == [96] * 3 + [0]
    # backward: every rank but the first sends its incoming state's gradient back
    both = state_passing_bytes(4, kind="linear", combine="sequential", backward=True, **kw)
    assert both == [96, 192, 192, 96]
    # all-gather: state plus the gated kind's [B, H, K] log decay (6 floats) to 3 others
    assert state_passing_bytes(4, kind="gated", **kw) == [3 * 120] * 4
    # a per-head decay: its [H] log total decay (2 floats) rides along
    assert state_passing_bytes(4, kind="linear", decay=True, **kw) == [3 * 104] * 4
    # normaliser: one more value column (B*H*K = 6 floats)
    assert state_passing_bytes(2, kind="linear", normalize=True, **kw) == [120] * 2
    with pytest.raises(ValueError, match="kind must be one of"):
        state_passing_bytes(2, kind="mamba", **kw)  # type: ignore[arg-type]
