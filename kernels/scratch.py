"""MoEPermuteScratch: every buffer moe_permute needs, allocated once (vLLM PR #43014's idea)."""
from __future__ import annotations

import torch

from . import _checks, _launch
from ._pipeline import CountShape, cdiv
from .permute import permuted_rows


class MoEPermuteScratch:
    """Buffers for moe_permute calls of up to `max_num_tokens` tokens.

    `moe_permute(..., scratch=s)` then allocates nothing on the device and returns views of these buffers (valid
    until the next call that uses this scratch). Give `hidden_size` and `hidden_dtype` so that the permuted rows and
    scales are pre-allocated too; without them they are allocated on the first call and reused. Calls with
    `align_block_size` need the scratch built with the largest one they use. Where the kernels cannot run on
    `device`, construction succeeds with `supported == False` and using the scratch raises a clear error.
    """

    def __init__(self, max_num_tokens: int, topk: int, num_experts: int, num_local_experts: int, device,
                 hidden_size: int | None = None, hidden_dtype: torch.dtype | None = None,
                 align_block_size: int | None = None):
        _checks.check_positive_int(max_num_tokens, "max_num_tokens")
        _checks.check_positive_int(topk, "topk")
        _checks.check_positive_int(num_experts, "num_experts")
        if num_local_experts == -1:
            num_local_experts = num_experts
        _checks.check_positive_int(num_local_experts, "num_local_experts")
        if num_local_experts > num_experts:
            raise ValueError(f"num_local_experts={num_local_experts} exceeds num_experts={num_experts}")
        if hidden_size is not None:
            _checks.check_positive_int(hidden_size, "hidden_size")
        if hidden_dtype is not None and hidden_dtype not in _checks.HIDDEN_DTYPES:
            raise TypeError(f"hidden_dtype {hidden_dtype} is not one of {_checks.HIDDEN_DTYPES}")
        self.max_num_tokens, self.topk = max_num_tokens, topk
        self.num_experts, self.num_local_experts = num_experts, num_local_experts
        self.hidden_size, self.hidden_dtype = hidden_size, hidden_dtype
        self.align_block_size = _checks.check_align_block_size(align_block_size)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())  # compare equal to tensors' devices
        self.supported = _launch.supported() and (self.device.type == "cuda" or
                                                   (self.device.type == "cpu" and _launch.INTERPRETED))
        self.capacity_routes = max_num_tokens * topk
        self.capacity_rows = permuted_rows(self.capacity_routes, num_experts, self.align_block_size)
        self._buffers: dict[str, torch.Tensor] = {}
        if not self.supported:
            return
        dev = self.device
        count = CountShape.allocate(self.capacity_routes, num_local_experts, dev)
        b = dict(
            **{f"count_{name}": buf for name, buf in count.items()},
            ticket=torch.zeros(1, dtype=torch.int32, device=dev),
            inv=torch.empty(self.capacity_routes, dtype=torch.int32, device=dev),
            offsets=torch.empty(num_local_experts + 1, dtype=torch.int64, device=dev),
            m_indices=torch.empty(self.capacity_rows, dtype=torch.int32, device=dev),
            topk_ids=torch.empty(self.capacity_routes, dtype=torch.int32, device=dev),
            token_expert_indices=torch.arange(self.capacity_routes, dtype=torch.int32, device=dev),
        )
        self._buffers = b
        if hidden_size is not None and hidden_dtype is not None:
            self._ensure("permuted", self.capacity_rows * hidden_size, hidden_dtype)
            self._ensure("scale", self.capacity_rows * cdiv(hidden_size, 128), torch.float32)

    def _require_supported(self) -> None:
        if not self.supported:
            raise RuntimeError(f"MoEPermuteScratch on {self.device}: the Triton kernels cannot run here "
                               f"(no CUDA device, and TRITON_INTERPRET=1 was not set before importing kernels)")

    def _ensure(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf

    def validate(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor) -> None:
        """Raise a clear error when this call does not fit the scratch."""
        self._require_supported()
        M, H = _checks.check_hidden_states(hidden_states)
        _, k = _checks.check_topk_ids(topk_ids, M)
        problems = []
        if M > self.max_num_tokens:
            problems.append(f"{M} tokens exceed max_num_tokens={self.max_num_tokens}")
        if k != self.topk:
            problems.append(f"topk_ids has topk={k}, scratch was built for topk={self.topk}")
        if hidden_states.device != self.device:
            problems.append(f"hidden_states is on {hidden_states.device}, scratch on {self.device}")
        if self.hidden_size is not None and H != self.hidden_size:
            problems.append(f"hidden_states has hidden size {H}, scratch was built for {self.hidden_size}")
        if self.hidden_dtype is not None and hidden_states.dtype != self.hidden_dtype:
            problems.append(f"hidden_states has dtype {hidden_states.dtype}, scratch was built for "
                            f"{self.hidden_dtype}")
        if problems:
            raise ValueError("moe_permute call does not fit its MoEPermuteScratch: " + "; ".join(problems))

    def outputs(self, routes: int, rows: int, hidden_states: torch.Tensor, a1q_scale, scale_cols: int,
                num_experts: int, num_local: int) -> dict:
        """Views of the buffers for one call (moe_permute calls this after validate)."""
        if num_experts != self.num_experts or num_local != self.num_local_experts:
            raise ValueError(f"moe_permute with n_expert={num_experts}, {num_local} local experts does not fit a "
                             f"MoEPermuteScratch built for {self.num_experts} experts, {self.num_local_experts} local")
        if rows > self.capacity_rows:
            raise ValueError(f"moe_permute needs {rows} permuted rows, the scratch holds {self.capacity_rows}: "
                             f"build it with align_block_size at least the call's (it has {self.align_block_size})")
        H = hidden_states.shape[1]
        if self.hidden_size is None:  # first call fixes the row shape; later calls must match it (validate)
            self.hidden_size, self.hidden_dtype = H, hidden_states.dtype
        b = self._buffers
        permuted = self._ensure("permuted", self.capacity_rows * H, hidden_states.dtype)
        out = {
            "inv": b["inv"][:routes], "offsets": b["offsets"],
            "count": dict({name[6:]: buf for name, buf in b.items() if name.startswith("count_")}, ticket=b["ticket"]),
            "m_indices": b["m_indices"][:rows], "permuted": permuted[:rows * H].view(rows, H), "scale": None,
        }
        if scale_cols:
            scale = self._ensure("scale", self.capacity_rows * cdiv(H, 128), a1q_scale.dtype)
            out["scale"] = scale[:rows * scale_cols].view(rows, scale_cols)
        return out

    def token_expert_indices_view(self, n_token: int) -> torch.Tensor:
        """[n_token, topk] int32 view holding t*topk + j (vLLM's token_expert_indices), no allocation."""
        self._require_supported()
        if not 0 <= n_token <= self.max_num_tokens:
            raise ValueError(f"n_token={n_token} outside [0, max_num_tokens={self.max_num_tokens}]")
        return self._buffers["token_expert_indices"][:n_token * self.topk].view(n_token, self.topk)

    def prepare_topk_ids(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """Copy topk_ids into the scratch as int32 and return that [M, topk] view (no allocation)."""
        self._require_supported()
        M, k = _checks.check_topk_ids(topk_ids)
        if M > self.max_num_tokens or k != self.topk:
            raise ValueError(f"topk_ids ({_checks.describe(topk_ids)}) does not fit the scratch "
                             f"(max_num_tokens={self.max_num_tokens}, topk={self.topk})")
        view = self._buffers["topk_ids"][:M * k].view(M, k)
        view.copy_(topk_ids)
        return view
