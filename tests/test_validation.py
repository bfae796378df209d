"""Bad arguments get a ValueError / TypeError that names the argument and what was wrong."""
import pytest
import torch

import moeperf_kernels as kernels


def args(device, M=4, k=2, H=16, E=8, dtype=torch.bfloat16):
    hidden = torch.randn(M, H, device=device).to(dtype)
    ids = torch.randint(0, E, (M, k), dtype=torch.int32, device=device)
    return hidden, ids


@pytest.mark.parametrize("mutate,error,match", [
    (lambda h, i, d: (h[0], i, {}), ValueError, r"hidden_states must be 2-D .* got shape \(16,\)"),
    (lambda h, i, d: (h.int(), i, {}), TypeError, r"hidden_states has dtype torch.int32"),
    (lambda h, i, d: (h, i.float(), {}), TypeError, r"topk_ids must hold integer expert ids, got shape \(4, 2\), "
                                                    r"dtype torch.float32"),
    (lambda h, i, d: (h, i[:3], {}), ValueError, r"topk_ids must have one row per token \(4 tokens"),
    (lambda h, i, d: (h, i.reshape(-1), {}), ValueError, r"topk_ids must be 2-D"),
    (lambda h, i, d: (h, i.to("meta"), {}), ValueError, r"one device, got hidden_states on .*, topk_ids on meta"),
    (lambda h, i, d: (h, i, {"align_block_size": 0}), ValueError, r"align_block_size must be > 0, got 0"),
    (lambda h, i, d: (h, i, {"align_block_size": -16}), ValueError, r"align_block_size must be > 0, got -16"),
    (lambda h, i, d: (h, i, {"n_local_expert": 4}), ValueError, r"n_local_expert=4 without an expert_map"),
    (lambda h, i, d: (h, i, {"expert_map": torch.tensor([0, 1, -1, -1, -1, -1, -1, -1], device=d),
                             "n_local_expert": 4}),
     ValueError, r"expert_map has 2 local experts \(entries >= 0\) but n_local_expert=4"),
    (lambda h, i, d: (h, i, {"expert_map": torch.tensor([0, 5, -1, -1, -1, -1, -1, -1], device=d)}),
     ValueError, r"expert_map entries must be -1 \(not local\) or a local id in \[0, 2\)"),
    (lambda h, i, d: (h, i, {"expert_map": torch.zeros(4, dtype=torch.int32, device=d)}),
     ValueError, r"expert_map must be a 1-D integer tensor with one entry per global expert \[8\]"),
    (lambda h, i, d: (h, i, {"permuted_hidden_states": torch.empty(7, 16, dtype=torch.bfloat16, device=d)}),
     ValueError, r"permuted_hidden_states must be a row-contiguous torch.bfloat16 tensor of shape \(8, 16\)"),
    (lambda h, i, d: (h, i, {"permuted_hidden_states": torch.empty(8, 16, dtype=torch.float16, device=d)}),
     ValueError, r"permuted_hidden_states must be .* got shape \(8, 16\), dtype torch.float16"),
    (lambda h, i, d: (h, i, {"a1q_scale": torch.ones(4, 3, device=d)}),
     ValueError, r"a1q_scale must be per-tensor .* \[4, 1\] .* \[4, 1\], got shape \(4, 3\)"),
    (lambda h, i, d: (h, i, {"a1q_scale": torch.ones(4, 1, dtype=torch.float16, device=d)}),
     TypeError, r"a1q_scale must be a 32-bit float tensor"),
], ids=["1d-hidden", "int-hidden", "float-ids", "ids-rows", "1d-ids", "devices", "align-0", "align-neg",
        "n_local-no-map", "n_local-vs-map", "map-values", "map-shape", "buffer-rows", "buffer-dtype", "scale-shape",
        "scale-dtype"])
def test_moe_permute_rejects(mutate, error, match, device):
    hidden, ids = args(device)
    hidden, ids, kw = mutate(hidden, ids, device)
    scale = kw.pop("a1q_scale", None)
    with pytest.raises(error, match=match):
        kernels.moe_permute(hidden, scale, ids, 8, **kw)


def test_moe_unpermute_rejects(device):
    hidden, ids = args(device)
    permuted, _, offsets, inv, _ = kernels.moe_permute(hidden, None, ids, 8)
    out = torch.empty_like(hidden)
    w = torch.rand(4, 2, device=device)
    with pytest.raises(ValueError, match=r"topk_weights must have shape \(4, 2\) \[num_tokens, topk\], got shape "
                                         r"\(4, 3\)"):
        kernels.moe_unpermute(out, permuted, torch.rand(4, 3, device=device), inv, offsets)
    with pytest.raises(TypeError, match=r"topk_weights must be a float tensor"):
        kernels.moe_unpermute(out, permuted, w.int(), inv, offsets)
    with pytest.raises(ValueError, match=r"inv_permuted_idx must be 1-D int32 or int64"):
        kernels.moe_unpermute(out, permuted, w, inv.to(torch.int16), offsets)
    with pytest.raises(ValueError, match=r"permuted_hidden_states .* must have out's hidden size 16 and dtype "
                                         r"torch.bfloat16"):
        kernels.moe_unpermute(out, permuted.float(), w, inv, offsets)
    with pytest.raises(ValueError, match=r"expert_first_token_offset must be 1-D int64"):
        kernels.moe_unpermute(out, permuted, w, inv, offsets.int())
    with pytest.raises(ValueError, match=r"one device, got out on .*, permuted_hidden_states on meta"):
        kernels.moe_unpermute(out, permuted.to("meta"), w, inv, offsets)
    with pytest.raises(TypeError, match=r"out has dtype torch.float8_e4m3fn"):
        kernels.moe_unpermute(out.to(torch.float8_e4m3fn), permuted, w, inv, offsets)


def test_standard_path_rejects(device):
    hidden, ids = args(device)
    with pytest.raises(ValueError, match=r"block_m must be > 0, got 0"):
        kernels._moe_permute(hidden, None, ids, 8, None, 0)
    with pytest.raises(TypeError, match=r"topk_ids must hold integer expert ids"):
        kernels._moe_permute(hidden, None, ids.float(), 8, None, 16)
    out = torch.empty_like(hidden)
    inv = torch.zeros(8, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"topk_weight must have shape \(4, 2\)"):
        kernels._moe_unpermute_and_reduce(out, hidden, inv, torch.rand(2, 2, device=device), False)
    with pytest.raises(ValueError, match=r"inv_perm must be 1-D int32 or int64 with num_tokens\*topk entries"):
        kernels._moe_unpermute_and_reduce(out, hidden, inv[:7], torch.rand(4, 2, device=device), False)


def test_align_rejects(device):
    _, ids = args(device)
    with pytest.raises(ValueError, match=r"block_size must be > 0, got 0"):
        kernels.moe_align_block_size(ids, 0, 8)
    with pytest.raises(TypeError, match=r"num_experts must be an int, got 8.0"):
        kernels.moe_align_block_size(ids, 16, 8.0)
    with pytest.raises(TypeError, match=r"topk_ids must hold integer expert ids"):
        kernels.moe_align_block_size(ids.float(), 16, 8)


def test_supported_here():
    assert kernels.moe_permute_unpermute_supported() is True
