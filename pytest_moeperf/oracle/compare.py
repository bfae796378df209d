"""Contract-level comparison of an implementation's outputs with the reference's (docs/contract.md section 1).

What the contract fixes is compared exactly (indices, offsets, moved bytes); what it leaves open is checked for the
properties it promises: rows of dropped routes only need to be distinct rows >= V, padding rows are never read,
and (for someone else's moe_align_block_size) the order inside an expert is free. Reductions are compared within a
stated tolerance. Each failure raises AssertionError naming the output and the first differing position.
"""
from __future__ import annotations

import torch

# Reductions accumulate in fp32 on both sides, in the same order of j but possibly with fused multiply-adds, then
# round to the output dtype: the results may differ by one unit in the last place of that dtype.
REDUCE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def _cpu(t):
    return t.detach().cpu()


def _same_device(got: torch.Tensor, want: torch.Tensor):
    return got.detach(), want.detach().to(got.device)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_equal(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = _same_device(got, want)
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if got.dtype != want.dtype:
        raise AssertionError(f"{name}: dtype {got.dtype}, expected {want.dtype}")
    differ = _bits(got) != _bits(want)
    if differ.any():
        where = torch.nonzero(differ)[0].tolist()
        g, w = _cpu(got[tuple(where)]), _cpu(want[tuple(where)])
        if g.element_size() == 1 and g.dtype.is_floating_point:
            g, w = g.float(), w.float()
        raise AssertionError(f"{name}: {int(differ.sum())} of {got.numel()} entries differ, first at {where}: "
                             f"got {g.item()}, expected {w.item()}")


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = _same_device(got, want)
    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
        raise AssertionError(f"{name}: {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} {want.dtype}")
    tol = REDUCE_TOLERANCE[want.dtype]
    g, w = got.float(), want.float()
    if not torch.isfinite(g).all():
        raise AssertionError(f"{name}: {int((~torch.isfinite(g)).sum())} non-finite values")
    err = (g - w).abs()
    bad = err > tol + tol * w.abs()
    if bad.any():
        where = torch.nonzero(bad)[0].tolist()
        raise AssertionError(f"{name}: {int(bad.sum())} values outside rtol=atol={tol}, first at {where}: got "
                             f"{g[tuple(where)].item()}, expected {w[tuple(where)].item()} (max error "
                             f"{err.max().item():.3g})")


def assert_align_matches(got, want, topk_ids, block_size: int, num_experts: int, any_order: bool = False) -> None:
    """moe_align_block_size outputs. With any_order, routes may sit in any order inside their expert's region."""
    g_sorted, g_experts, g_ntpp = got
    w_sorted, w_experts, w_ntpp = want
    assert_equal("num_tokens_post_padded", g_ntpp, w_ntpp)
    assert_equal("expert_ids", g_experts, w_experts)
    if not any_order:
        assert_equal("sorted_token_ids", g_sorted, w_sorted)
        return
    g_sorted, w_sorted = _same_device(g_sorted, w_sorted)
    if g_sorted.shape != w_sorted.shape:
        raise AssertionError(f"sorted_token_ids: shape {tuple(g_sorted.shape)}, expected {tuple(w_sorted.shape)}")
    ids = topk_ids.reshape(-1).long()
    counts = torch.bincount(ids[(ids >= 0) & (ids < num_experts)], minlength=num_experts)
    start = 0
    for e in range(num_experts):
        end = start + -(-int(counts[e]) // block_size) * block_size
        assert_equal(f"sorted_token_ids of expert {e} (rows {start}:{end}, as a set)",
                     torch.sort(g_sorted[start:end]).values, torch.sort(w_sorted[start:end]).values)
        start = end
    assert_equal("sorted_token_ids tail", g_sorted[start:], w_sorted[start:])


def assert_permute_matches(got, want, hidden_states, a1q_scale, topk_ids, local_of_route, fifth: str = "m_indices",
                           any_order: bool = False) -> None:
    """moe_permute outputs. local_of_route: each route's local expert, -1 where dropped (reference helper).

    fifth: what the 5th output is, "m_indices" (the legacy vintage: each row's local expert) or "permuted_idx" (the
    current one: the route that owns each row, R for rows no route owns). any_order: rows inside an expert may come
    in any order (atomics-based counting sorts): each expert's rows then hold its routes as a set, every route a row
    of its own, and the rows and scales are checked where the implementation put them."""
    g_perm, g_scale, g_offs, g_inv, g_fifth = got
    w_perm, w_scale, w_offs, w_inv, w_m = want
    assert_equal("expert_first_token_offset", g_offs, w_offs)
    if fifth == "m_indices":
        assert_equal("m_indices", g_fifth, w_m)
    if tuple(g_perm.shape) != tuple(w_perm.shape) or g_perm.dtype != w_perm.dtype:
        raise AssertionError(f"permuted_hidden_states: {tuple(g_perm.shape)} {g_perm.dtype}, expected "
                             f"{tuple(w_perm.shape)} {w_perm.dtype}")
    g_inv, w_inv = _same_device(g_inv, w_inv)
    assert_equal("inv_permuted_idx shape/dtype", torch.zeros(g_inv.shape, dtype=g_inv.dtype),
                 torch.zeros(w_inv.shape, dtype=w_inv.dtype))
    local = local_of_route.to(g_inv.device) >= 0
    if any_order:
        _assert_rows_per_expert(g_inv, w_inv, local, w_offs)
    else:
        assert_equal("inv_permuted_idx of local routes", g_inv[local], w_inv[local])
    V, P = int(w_offs[-1]), w_perm.shape[0]
    dropped = g_inv[~local].long()
    if dropped.numel():
        if not ((dropped >= V) & (dropped < P)).all():
            raise AssertionError(f"inv_permuted_idx of dropped routes must lie in [V={V}, P={P}), got "
                                 f"{dropped[(dropped < V) | (dropped >= P)][:8].tolist()}")
        if torch.unique(dropped).numel() != dropped.numel():
            raise AssertionError("inv_permuted_idx gives two dropped routes the same row")
    rows = g_inv[local].long()  # where this implementation put each local route (checked against the reference)
    if fifth == "permuted_idx":
        _assert_permuted_idx(g_fifth, g_inv, local, V, P)
    tokens = torch.nonzero(local).flatten() // topk_ids.shape[1]
    assert_equal("permuted_hidden_states rows of local routes", _bits(g_perm)[rows],
                 _bits(hidden_states.to(g_perm.device))[tokens])
    if a1q_scale is None or a1q_scale.dim() < 2:
        if g_scale is not a1q_scale:
            raise AssertionError("a per-tensor (or absent) a1q_scale must be returned unchanged")
        return
    if tuple(g_scale.shape) != (P, a1q_scale.shape[1]):
        raise AssertionError(f"a1q_scale: shape {tuple(g_scale.shape)}, expected {(P, a1q_scale.shape[1])}")
    assert_equal("a1q_scale rows of local routes", g_scale[rows], a1q_scale.to(g_scale.device)[tokens])


def _assert_rows_per_expert(g_inv, w_inv, local, offsets) -> None:
    """Each local route's row lies in its expert's region (the reference's row tells which), and no two share one."""
    g_rows, w_rows = g_inv[local].long(), w_inv[local].long()
    bounds = offsets.to(g_rows.device).long()
    expert = torch.searchsorted(bounds, w_rows, right=True) - 1  # the region each reference row lies in
    inside = (g_rows >= bounds[expert]) & (g_rows < bounds[expert + 1])
    if not inside.all():
        bad = torch.nonzero(~inside).flatten()[:8].tolist()
        raise AssertionError(f"inv_permuted_idx of local routes (any order inside an expert): routes at {bad} have "
                             f"rows outside their expert's region")
    if torch.unique(g_rows).numel() != g_rows.numel():
        raise AssertionError("inv_permuted_idx of local routes (any order inside an expert): two routes share a row")


def _assert_permuted_idx(permuted_idx, inv, local, V: int, P: int) -> None:
    """The current vintage's 5th output: the route that owns each row, R for rows no route owns."""
    R = inv.numel()
    permuted_idx = permuted_idx.to(inv.device).long()
    if tuple(permuted_idx.shape) != (P,):
        raise AssertionError(f"permuted_idx: shape {tuple(permuted_idx.shape)}, expected ({P},) (one per row)")
    want = torch.full((P,), R, dtype=torch.long, device=inv.device)
    routes = torch.arange(R, device=inv.device)
    want[inv[local].long()] = routes[local]
    owned_by_dropped = inv[~local].long()
    valid = permuted_idx[:V] == want[:V]
    if not valid.all():
        bad = torch.nonzero(~valid).flatten()[:8].tolist()
        raise AssertionError(f"permuted_idx: rows {bad} do not name the route that owns them (or R={R})")
    tail = permuted_idx[V:]
    allowed = torch.full((P,), R, dtype=torch.long, device=inv.device)
    allowed[owned_by_dropped] = routes[~local]
    if not ((tail == R) | (tail == allowed[V:])).all():
        raise AssertionError(f"permuted_idx: rows from V={V} on must hold R={R} or the dropped route whose row it is")
