"""MoE model shapes: the built-in table (docs/contract.md section 2) and reading a local HuggingFace config.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class MoEShape:
    num_experts: int  # E
    topk: int  # k
    hidden_size: int  # H
    intermediate_size: int  # I, per expert
    dtype: str = "bf16"  # the dtype the model ships in ("auto" resolves to this)

    def problem(self) -> str | None:
        """Why no routing can have this shape (None when it can): a token picks topk distinct experts."""
        if self.topk > self.num_experts:
            return f"topk={self.topk} exceeds num_experts={self.num_experts}"
        return None


BUILTIN = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": MoEShape(8, 2, 4096, 14336),
    "mistralai/Mixtral-8x22B-v0.1": MoEShape(8, 2, 6144, 16384),
    "deepseek-ai/DeepSeek-V2-Lite": MoEShape(64, 6, 2048, 1408),
    "deepseek-ai/DeepSeek-V3": MoEShape(256, 8, 7168, 2048),
    "Qwen/Qwen1.5-MoE-A2.7B": MoEShape(60, 4, 2048, 1408),
    "Qwen/Qwen2-57B-A14B": MoEShape(64, 8, 3584, 2560),
    "Qwen/Qwen3-30B-A3B": MoEShape(128, 8, 2048, 768),
    "Qwen/Qwen3-235B-A22B": MoEShape(128, 8, 4096, 1536),
    "databricks/dbrx-instruct": MoEShape(16, 4, 6144, 10752),
    "openai/gpt-oss-20b": MoEShape(32, 4, 2880, 2880),
    "openai/gpt-oss-120b": MoEShape(128, 4, 2880, 2880),
    "meta-llama/Llama-4-Scout-17B-16E": MoEShape(16, 1, 5120, 8192),
    "meta-llama/Llama-4-Maverick-17B-128E": MoEShape(128, 1, 5120, 8192),
    "ai21labs/Jamba-v0.1": MoEShape(16, 2, 4096, 14336),
}

# Field names as vLLM reads them, first match wins (moe_intermediate_size before the dense intermediate_size).
_FIELDS = {
    "num_experts": ("num_local_experts", "n_routed_experts", "num_experts", "ffn_config.moe_num_experts"),
    "topk": ("num_experts_per_tok", "ffn_config.moe_top_k"),
    "hidden_size": ("hidden_size", "d_model"),
    "intermediate_size": ("moe_intermediate_size", "ffn_config.ffn_hidden_size", "intermediate_size"),
}
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "bf16"}


class ConfigError(ValueError):
    pass


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def shape_from_config(path: str | Path) -> MoEShape:
    """Read E, k, H, I (and the dtype) from a local config.json; text_config (Llama 4) is read first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path} is not readable JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    scopes = [cfg["text_config"], cfg] if isinstance(cfg.get("text_config"), dict) else [cfg]
    values, missing = {}, []
    for name, candidates in _FIELDS.items():
        found = next((v for scope in scopes for c in candidates if (v := _lookup(scope, c)) is not None), None)
        if isinstance(found, bool) or not isinstance(found, int) or found <= 0:
            missing.append(f"{name} (one of {', '.join(candidates)})")
        else:
            values[name] = found
    if missing:
        raise ConfigError(f"config file {path} lacks a positive integer for " + "; ".join(missing))
    dtype = next((_DTYPES[d] for s in scopes if (d := s.get("torch_dtype") or s.get("dtype")) in _DTYPES), "bf16")
    shape = MoEShape(dtype=dtype, **values)
    if shape.problem():
        raise ConfigError(f"config file {path}: {shape.problem()}")
    return shape
