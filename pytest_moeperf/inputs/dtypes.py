"""Dtype facts the inputs and the oracle share."""
from __future__ import annotations

import torch

# What a dtype mode moves through permute / unpermute (int8_w8a16: int8 weights, 16-bit activations: bf16 data).
PAYLOAD = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8_w8a8": torch.float8_e4m3fn,
           "int8_w8a16": torch.bfloat16}
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448: the scale of fp8 quantization maps amax to it
