"""routing mixer: the head split (routing heads on layer-normalised q/k, local heads blocked)
written out from the op, the k-means state (seeded centroids; the EMA step only when the
commitment loss from ``aux_loss()`` is backpropagated in training mode, never in eval or in a
forward), causality (``prefix``, the causal default, exact even while centroids move;
``balanced`` not), ``reference`` against ``gather`` at odd sizes, ``shared_qk``, config
errors, FLOPs and the registered peer case. (Shapes, gradients, maps, export declarations,
low precision and the gate: tests/contract.)"""

from __future__ import annotations

import pytest
import torch

import attnzoo as az
from attnzoo import peers
from attnzoo.ops.routing import (
    cluster_means,
    commitment_loss,
    local_attention,
    local_attention_flops,
    route_norm,
    routing_attention,
    routing_attention_flops,
)
from attnzoo.testing import randomise
from tests.helpers import assert_all_close


def block(**cfg) -> az.Mixer:
    cfg = {"d_model": 32, "num_heads": 4, "num_clusters": 3, **cfg}
    return randomise(az.build_mixer("routing", **cfg), seed=0, constant_only=True)


def x_of(T: int, B: int = 2, D: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def test_defaults() -> None:
    m = az.build_mixer("routing", d_model=32)
    assert (m.cfg.heads, m.cfg.n_routing, m.cfg.num_clusters) == (2, 1, 8)
    assert m.cfg.routing_rule == "balanced" and (m.cfg.ema_decay, m.cfg.commitment) == (0.999, 1e-4)
    assert az.build_mixer("routing", d_model=32, causal=True).cfg.routing_rule == "prefix"
    assert az.build_mixer("routing", d_model=512).cfg.heads == 8
    assert az.build_mixer("routing", d_model=33).cfg.heads == 1  # odd: one (routing) head
    assert m.centroids.shape == (1, 8, 16) and "centroids" in m.state_dict()
    assert not any(p is m.centroids for p in m.parameters()), "centroids are a buffer"


def test_centroids_come_from_the_seed() -> None:
    torch.manual_seed(1)
    a = az.build_mixer("routing", d_model=32, num_heads=4)
    torch.manual_seed(2)
    b = az.build_mixer("routing", d_model=32, num_heads=4)
    c = az.build_mixer("routing", d_model=32, num_heads=4, centroid_seed=5)
    assert torch.equal(a.centroids, b.centroids) and not torch.equal(a.centroids, c.centroids)
    # the official initialiser: layer-normalised N(0, 1) draws
    torch.testing.assert_close(a.centroids.mean(-1), torch.zeros(2, 8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shared_qk", [False, True])
def test_heads_written_out(causal: bool, shared_qk: bool) -> None:
    """First ``routing_heads`` heads: routing attention on layer-normalised q and k, unscaled;
    the others: blocked local attention with ``local_block = ceil(w / 2)``."""
    m = block(causal=causal, shared_qk=shared_qk, routing_heads=2).double()
    x = x_of(21).double()
    H, K, Hr = 4, 8, 2
    proj = m.qkv_proj(x)
    nk = H - Hr if shared_qk else H
    q, k, v = (t.unflatten(-1, (-1, K)) for t in proj.split([H * K, nk * K, H * K], -1))
    qn = route_norm(q[:, :, :Hr], "layer")
    kn = qn if shared_qk else route_norm(k[:, :, :Hr], "layer")
    w = 7  # ceil(21 / 3)
    routed = routing_attention(qn, kn, v[:, :, :Hr], m.centroids, causal=causal, scale=1.0,
                               routing="prefix" if causal else "balanced", window=w, norm="none",
                               impl="reference")  # fmt: skip
    local = local_attention(q[:, :, Hr:], k[:, :, -2:], v[:, :, Hr:], block=4, causal=causal,
                            impl="reference")  # fmt: skip
    want = m.out_proj(torch.cat([routed, local], 2).flatten(2))
    torch.testing.assert_close(m(x), want)
    torch.testing.assert_close(m.attention_maps(x).output(), want)
    assert m.qkv_proj.weight.shape[0] == (2 * H + nk) * K


CONFIGS = [{}, {"window": 4, "local_block": 3}, {"num_clusters": 5, "routing_heads": 4},
           {"shared_qk": True, "window": 30}]  # fmt: skip
CASES = [(c, cfg) for c in (False, True) for cfg in CONFIGS] + [(True, {"routing": "balanced"})]


@pytest.mark.parametrize("causal,cfg", CASES, ids=lambda v: str(v))
def test_gather_matches_reference(causal: bool, cfg: dict) -> None:
    ref = block(causal=causal, impl="reference", **cfg)
    fast = block(causal=causal, impl="gather", **cfg)
    fast.load_state_dict(ref.state_dict())
    x = x_of(37)
    g = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(3))
    outs = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_(True)
        (m(xi) * g).sum().backward()
        outs.append([m(x).detach(), xi.grad, *(p.grad for p in m.parameters())])
    assert_all_close(outs[1], outs[0], atol=2e-5, rtol=1e-5)


def test_ema_only_when_the_commitment_loss_is_backpropagated() -> None:
    m = block(causal=True)
    x = x_of(20)
    start = m.centroids.clone()
    assert m.aux_loss().item() == 0.0, "zero before any training forward"
    m.eval()
    with torch.no_grad():
        y0 = m(x)
    m(x).sum().backward()  # eval: no commitment loss, no step
    assert torch.equal(m.centroids, start) and m.aux_loss().item() == 0.0
    m.train()
    y = m(x)
    y.sum().backward(retain_graph=True)  # the output alone: no step either
    assert torch.equal(m.centroids, start)
    torch.testing.assert_close(y, y0)  # train and eval forwards agree (no dropout, no update)
    loss = m.aux_loss()
    qn, kn = _routing_vectors(m, x)
    want = 1e-4 * (commitment_loss(qn, start) + commitment_loss(kn, start))
    torch.testing.assert_close(loss, want)
    means, counts = cluster_means([qn.detach(), kn.detach()], start)
    loss.backward(retain_graph=True)
    stepped = torch.where(counts[..., None] > 0, 0.999 * start + 0.001 * means, start)
    torch.testing.assert_close(m.centroids, stepped)
    assert not torch.equal(m.centroids, start)
    loss.backward()  # the same forward's step is applied once
    torch.testing.assert_close(m.centroids, stepped)
    with torch.no_grad():
        m(x)  # a training forward under no_grad: nothing to backpropagate, no step
    assert m.aux_loss() is not loss
    torch.testing.assert_close(m.centroids, stepped)


def _routing_vectors(m: az.Mixer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qn, kn, *_ = m._project(x)
    return qn, kn


def test_aux_loss_joins_the_training_loss() -> None:
    """The intended use: ``loss = task + aux_loss()`` backpropagated once per step."""
    m = block(commitment=1.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = x_of(16)
    before = m.centroids.clone()
    for _ in range(2):
        opt.zero_grad()
        y = m(x)
        (y.pow(2).mean() + m.aux_loss()).backward()
        opt.step()
    assert not torch.equal(m.centroids, before)
    assert m.qkv_proj.weight.grad is not None


@pytest.mark.parametrize("t0", [0, 5, 13])
def test_a_future_token_never_changes_a_past_output(t0: int) -> None:
    """Causal default (``prefix``): past outputs ignore the future, in eval and in training,
    also after the future tokens moved the centroids through a backpropagated EMA step (the
    step changes later calls of every input alike; within a call nothing moves). Equal up to
    float64 rounding: the padded per-cluster windows' sizes depend on the whole input."""
    m = block(causal=True, num_clusters=4).double()  # float64: only rounding may differ
    x = x_of(24).double()
    x2 = x.clone()
    x2[:, t0 + 1 :] += torch.randn(x2[:, t0 + 1 :].shape) * 3
    for mode in ("eval", "train"):
        getattr(m, mode)()
        torch.testing.assert_close(m(x)[:, : t0 + 1], m(x2)[:, : t0 + 1], atol=1e-13, rtol=0)
    m.train()
    m(x2)
    before = m.centroids.clone()
    m.aux_loss().backward()  # the perturbed future tokens move the centroids
    assert not torch.equal(m.centroids, before)
    m.eval()
    torch.testing.assert_close(m(x)[:, : t0 + 1], m(x2)[:, : t0 + 1], atol=1e-13, rtol=0)


def test_balanced_routing_with_causal_is_not_causal() -> None:
    """Documented: ranking the whole sequence lets the future evict past tokens."""
    m = block(causal=True, routing="balanced", num_clusters=4).eval()
    x = x_of(24)
    x2 = x.clone()
    x2[:, 12:] += torch.randn(x2[:, 12:].shape) * 3
    assert not torch.allclose(m(x)[:, :12], m(x2)[:, :12])


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="routing_heads must be <= num_heads=4, got 5"):
        az.build_mixer("routing", d_model=32, num_heads=4, routing_heads=5)
    with pytest.raises(ValueError, match="routing='prefix' .* needs causal=True"):
        az.build_mixer("routing", d_model=32, routing="prefix")
    with pytest.raises(ValueError, match="num_clusters must be >= 1, got 0"):
        az.build_mixer("routing", d_model=32, num_clusters=0)
    with pytest.raises(ValueError, match="ema_decay must be >= 0 and <= 1, got 1.5"):
        az.build_mixer("routing", d_model=32, ema_decay=1.5)
    with pytest.raises(ValueError, match="commitment must be"):
        az.build_mixer("routing", d_model=32, commitment=-1.0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        az.build_mixer("routing", d_model=32, window=0)
    with pytest.raises((ValueError, TypeError), match="num_cluster"):
        az.build_mixer("routing", d_model=32, num_cluster=4)


def test_flops() -> None:
    spec = az.get_spec("routing")
    cfg = block(causal=True).cfg  # H=4, 2 routing heads, K=8, C=3
    T = 30  # w = 10, local block 5
    proj = 2 * 1 * T * 32 * (3 * 4 + 4) * 8
    want = proj + routing_attention_flops(1, 2, 8, 8, T, 3, 10)
    want += local_attention_flops(1, 2, 8, 8, T, 5, True)
    assert spec.flops(cfg, 1, T, None, None) == want
    shared = block(shared_qk=True).cfg
    assert spec.flops(shared, 1, T, None, None) < spec.flops(block().cfg, 1, T, None, None)


def test_peer_case_builds_and_agrees() -> None:
    (case,) = peers.get_cases(["routing/routing-transformer"])
    ours, theirs = case.build(case.smoke_size, torch.Generator().manual_seed(0)).outputs()
    err = float(((ours - theirs).abs().max() / theirs.abs().max()).detach())
    assert err < 1e-5
