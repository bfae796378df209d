"""Launch parameters of the tunable kernels: their defaults, the search space a tuning run sweeps, and the tuned
configs that a call reads for its shape and GPU. Two families:

- the row-moving kernels (permute_rows_kernel / permute_fused_kernel, unpermute_kernel): {"BLOCK_T": tokens per
  program, "BLOCK_H": hidden columns per program, "num_warps": ...}, in kernels/configs/<config_name()> as
  {"triton": version, "configs": {"<batch size>": config}}. No pipelined loops, so no num_stages.
- fused_experts' expert GEMM: vLLM's six parameters (GEMM_KEYS) in files named and shaped like vLLM's
  (gemm_config_name(): "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json", {"<batch size>": config, ...}), so
  that the files are interchangeable with vLLM's.

A config file serves one caller: moe_unpermute reads "unpermute" files, the standard path's
_moe_unpermute_and_reduce (another variant of the same kernel, over padded rows) reads "unpermute_and_reduce" files,
which no tuning run writes, so it runs the defaults (an H200 config tuned for moe_unpermute ran it 13% slower).
A tuned entry serves only the batch size it was tuned at: a call at any other batch size runs the defaults. An entry
is written only where the tuning run timed it faster than the default (pytest_moeperf/items.py, TuneItem), so no
batch size runs a config that was never shown to beat the default there (vLLM's reader takes the nearest entry
instead; that rule handed Mixtral M = 256 and 512 the M = 64 config on the H200, +39% and +130%).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import threading
import typing
from pathlib import Path

import torch
import triton

from . import _launch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPS = ("permute", "unpermute", "fused_experts")
KEYS = ("BLOCK_T", "BLOCK_H", "num_warps")
GEMM_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
GEMM_SPACE = {"BLOCK_SIZE_M": (16, 32, 64, 128, 256), "BLOCK_SIZE_N": (32, 64, 128, 256),
              "BLOCK_SIZE_K": (64, 128, 256), "GROUP_SIZE_M": (1, 16, 32, 64), "num_warps": (4, 8),
              "num_stages": (2, 3, 4, 5)}  # vLLM's benchmark_moe.py sweep
GEMM_SHARED_BYTES = 227 * 1024  # an H100 SM's shared memory per block: pipelined tiles beyond it cannot launch
MOST_TILE_BYTES = 32768  # a program's tile: larger tiles spill registers
MOST_ROUTES_RANKED = 128  # permute_fused_kernel ranks BLOCK_T * k routes pairwise (a square of that many)


class ConfigError(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def device_name(device: torch.device) -> str:
    """The GPU model as it appears in config file names (e.g. NVIDIA_H100_80GB_HBM3; "cpu" off the GPU)."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(device)).strip("_")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def config_name(op: str, H: int, k: int, dtype: torch.dtype, device: str, E: int | None = None) -> str:
    """File name of the tuned configs of one shape: the unpermute kernels do not depend on the expert count, so have
    no E."""
    experts = f",E={E}" if op == "permute" else ""
    return f"{op}{experts},H={H},k={k},dtype={dtype_name(dtype)},device_name={device}.json"


def default_config(op: str, H: int, M: int, k: int, elem_bytes: int) -> dict:
    """The config without a tuned entry: _launch.row_block's tile, within what problem_with allows (a permute ranks
    at most MOST_ROUTES_RANKED routes per program: narrow rows would otherwise get tiles of hundreds of tokens, whose
    pairwise ranking takes Triton a minute to compile). The unpermutes take _launch.reduce_block's tile where it
    gives one."""
    tile = None if op == "permute" else _launch.reduce_block(H, M, k, elem_bytes)
    if tile is not None:
        return dict(zip(KEYS, tile))
    block_t, block_h = _launch.row_block(H, M, elem_bytes)
    if op == "permute":
        while block_t > 1 and block_t * k > MOST_ROUTES_RANKED:
            block_t //= 2
    warps = _launch.num_warps(block_t * block_h)
    while warps > 1 and block_t * block_h < 32 * warps:
        warps //= 2
    return {"BLOCK_T": block_t, "BLOCK_H": block_h, "num_warps": warps}


def problem_with(config: dict, op: str, H: int, k: int, elem_bytes: int) -> str | None:
    """Why this config cannot run for the shape (None when it can)."""
    if set(config) != set(KEYS):
        return f"a config has exactly the keys {', '.join(KEYS)}, got {sorted(config)}"
    bt, bh, warps = (config[key] for key in KEYS)
    for key, value in config.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
            return f"{key} must be a power of two, got {value!r}"
    if bh > _launch.next_pow2(H):
        return f"BLOCK_H {bh} is wider than the row ({H} elements)"
    if bt * bh * elem_bytes > MOST_TILE_BYTES:
        return f"tile of {bt} x {bh} x {elem_bytes} bytes is over {MOST_TILE_BYTES} bytes"
    if warps > 16 or bt * bh < 32 * warps:
        return f"num_warps {warps} does not fit a tile of {bt * bh} elements (32 per warp, at most 16 warps)"
    if op == "permute" and bt * k > MOST_ROUTES_RANKED:
        return f"BLOCK_T {bt} x topk {k} routes are over the {MOST_ROUTES_RANKED} one program ranks"
    return None


def search_space(op: str, H: int, M: int, k: int, elem_bytes: int) -> list[dict]:
    """Candidate configs for one shape, invalid ones pruned before any launch; the default comes first. Columns per
    program run from 1/64 of the row to the whole row; tokens per program up to the batch size."""
    default = default_config(op, H, M, k, elem_bytes)
    out = [default]
    row = _launch.next_pow2(H)
    for bh in (w for w in (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192) if row // 64 <= w <= row):
        for bt in (1, 2, 4, 8, 16, 32):
            if bt > _launch.next_pow2(max(M, 1)):
                continue
            for warps in (2, 4, 8, 16):
                c = {"BLOCK_T": bt, "BLOCK_H": bh, "num_warps": warps}
                if c != default and problem_with(c, op, H, k, elem_bytes) is None:
                    out.append(c)
    return out


def gemm_config_name(E: int, N: int, device: str, dtype_mode: str | None, block_shape) -> str:
    """vLLM's name for fused_experts' tuned configs: E local experts, N = w2.shape[2]; dtype only when quantized."""
    dtype = f",dtype={dtype_mode}" if dtype_mode else ""
    block = f",block_shape={list(block_shape)}" if block_shape else ""
    return f"E={E},N={N},device_name={device}{dtype}{block}.json"


def gemm_default(M: int, E: int, block_shape=None) -> dict:
    """fused_experts' GEMM config without a tuned file: small row blocks while most experts get few routes."""
    if _launch.INTERPRETED:
        cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1, num_warps=4, num_stages=1)
    elif M <= E:
        cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=4)
    else:
        cfg = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=8, num_warps=8, num_stages=3)
    if block_shape is not None:  # a K step must stay inside one scale group
        cfg["BLOCK_SIZE_K"] = min(cfg["BLOCK_SIZE_K"], block_shape[1])
    return cfg


def gemm_problem_with(config: dict, elem_bytes: int, block_shape) -> str | None:
    """Why this GEMM config cannot run (None when it can)."""
    if set(config) != set(GEMM_KEYS):
        return f"a config has exactly the keys {', '.join(GEMM_KEYS)}, got {sorted(config)}"
    for key, value in config.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{key} must be a positive integer, got {value!r}"
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    if block_shape is not None and block_shape[1] % bk:
        return f"BLOCK_SIZE_K {bk} must divide the quantization block's {block_shape[1]} columns"
    if (bm + bn) * bk * elem_bytes * config["num_stages"] > GEMM_SHARED_BYTES:
        return f"{config['num_stages']} stages of {bm}x{bk} and {bk}x{bn} tiles are over the shared memory"
    return None


def gemm_search_space(M: int, k: int, E: int, elem_bytes: int, block_shape) -> list[dict]:
    """vLLM's sweep for one batch size, the default first; pruned before any launch: K steps that straddle a
    quantization block, pipelines over the shared memory, and row blocks wider than all the batch's routes."""
    default = gemm_default(M, E, block_shape)
    if _launch.INTERPRETED:  # the interpreter times nothing: a few configs that check the plumbing
        return [default, dict(default, BLOCK_SIZE_N=64), dict(default, GROUP_SIZE_M=4)]
    out = [default]
    most_m = max(16, _launch.next_pow2(M * k))
    for values in itertools.product(*(GEMM_SPACE[key] for key in GEMM_KEYS)):
        c = dict(zip(GEMM_KEYS, values))
        if c != default and c["BLOCK_SIZE_M"] <= most_m and gemm_problem_with(c, elem_bytes, block_shape) is None:
            out.append(c)
    return out


@functools.lru_cache(maxsize=None)
def read_table(path: Path, op: str) -> dict[int, dict]:
    """{batch size: config} of op's config file ({} when there is none); a malformed file is an error naming it.
    vLLM-style files (fused_experts) hold the batch sizes at the top level beside "triton_version"."""
    if not path.exists():
        return {}
    gemm = op == "fused_experts"
    try:
        data = json.loads(path.read_text())
        entries = data if gemm else data["configs"]
        table = {int(m): dict(c) for m, c in entries.items() if m != "triton_version"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"tuned config file {path} is unreadable ({type(e).__name__}: {e}); fix or delete it") \
            from None
    keys = GEMM_KEYS if gemm else KEYS
    for m, c in table.items():
        if set(c) != set(keys):
            raise ConfigError(f"tuned config file {path}, batch size {m}: needs exactly {', '.join(keys)}, got "
                              f"{sorted(c)}")
    return table


def file_data(op: str, table: dict[int, dict]) -> dict:
    """What op's config file holds for `table`, sorted by batch size."""
    configs = {str(m): {key: table[m][key] for key in sorted(table[m])} for m in sorted(table)}
    if op == "fused_experts":
        return {"triton_version": triton.__version__, **configs}
    return {"triton": triton.__version__, "configs": configs}


def clear_cache() -> None:
    """Forget the files read so far and the configs chosen from them (after writing one, or when the folder
    changes)."""
    read_table.cache_clear()
    _cached_launch_config.cache_clear()


@contextlib.contextmanager
def configs_from(folder: Path):
    """Calls made inside read tuned configs from `folder` instead of kernels/configs/ (an empty or missing folder:
    the defaults)."""
    global CONFIG_DIR
    saved = CONFIG_DIR
    CONFIG_DIR = Path(folder)
    clear_cache()
    try:
        yield
    finally:
        CONFIG_DIR = saved
        clear_cache()


class Lookup(typing.NamedTuple):
    """What a call asked for: the config file name that answers it, its op and batch size, and what its search space
    depends on (candidates()): (H, k, elem_bytes) for the row kernels, (k, E, elem_bytes, block_shape) for
    fused_experts."""
    name: str
    op: str
    M: int
    shape: tuple


def candidates(lookup: Lookup) -> list[dict]:
    """The search space of what a call looked up, the default first."""
    if lookup.op == "fused_experts":
        return gemm_search_space(lookup.M, *lookup.shape)
    H, k, elem_bytes = lookup.shape
    return search_space(lookup.op, H, lookup.M, k, elem_bytes)


_local = threading.local()  # per thread: a tuning run compiles its candidates in several threads at once


def _stack(name: str) -> list:
    """This thread's stack of forced configs ("forced": (op, config)) or recordings ("recording": [Lookup])."""
    if not hasattr(_local, name):
        setattr(_local, name, [])
    return getattr(_local, name)


@contextlib.contextmanager
def forced(config: dict, op: str):
    """Calls of `op` made inside use this config (a tuning run timing its candidates); other ops are untouched."""
    _stack("forced").append((op, config))
    try:
        yield
    finally:
        _stack("forced").pop()


@contextlib.contextmanager
def recording():
    """Yields a list that collects a Lookup for every call made inside (what a call reads)."""
    seen: list[Lookup] = []
    _stack("recording").append(seen)
    try:
        yield seen
    finally:
        _stack("recording").pop()


def launch_config(op: str, M: int, H: int, k: int, dtype: torch.dtype, device: torch.device,
                  E: int | None = None) -> dict:
    """The config a call uses (callers only read it): a forced one, else the tuned entry of this batch size for this
    shape and GPU, else the defaults. A tuned entry that cannot run for the shape is an error naming its file.
    Outside forced() and recording() the choice is remembered per call shape and config folder (clear_cache()
    forgets it): looking it up again cost a permute call 7-10 us of its 37-52 us of Python (a 2-core CI machine)."""
    if _stack("forced") or _stack("recording"):
        return _launch_config(op, M, H, k, dtype, device, E)
    return _cached_launch_config(op, M, H, k, dtype, device, E, CONFIG_DIR)


@functools.lru_cache(maxsize=4096)
def _cached_launch_config(op, M, H, k, dtype, device, E, config_dir) -> dict:
    return _launch_config(op, M, H, k, dtype, device, E)  # config_dir: part of the key only


def _launch_config(op: str, M: int, H: int, k: int, dtype: torch.dtype, device: torch.device, E: int | None) -> dict:
    elem_bytes = dtype.itemsize
    lookup = Lookup(config_name(op, H, k, dtype, device_name(device), E), op, M, (H, k, elem_bytes))
    config, where = _chosen(lookup)
    if config is None:
        return default_config(op, H, M, k, elem_bytes)
    why = problem_with(config, op, H, k, elem_bytes)
    if why:
        raise ConfigError(f"{where}: {why}")
    return config


def gemm_launch_config(M: int, k: int, E: int, N: int, weight_dtype: torch.dtype, dtype_mode: str | None,
                       block_shape, device: torch.device) -> dict:
    """fused_experts' GEMM config: forced, else the tuned entry of this batch size in vLLM's file for this shape,
    mode and GPU, else gemm_default()."""
    elem_bytes = weight_dtype.itemsize
    block_shape = tuple(block_shape) if block_shape else None  # hashable: lookups are collected in sets
    name = gemm_config_name(E, N, device_name(device), dtype_mode, block_shape)
    config, where = _chosen(Lookup(name, "fused_experts", M, (k, E, elem_bytes, block_shape)))
    if config is None:
        return gemm_default(M, E, block_shape)
    why = gemm_problem_with(config, elem_bytes, block_shape)
    if why:
        raise ConfigError(f"{where}: {why}")
    return config


def _chosen(lookup: Lookup) -> tuple[dict | None, str]:
    """(a forced config, or the tuned entry of exactly this batch size, or None; where it came from); the lookup is
    recorded for recording()."""
    for seen in _stack("recording"):
        seen.append(lookup)
    force = [config for forced_op, config in _stack("forced") if forced_op == lookup.op]
    if force:
        return force[-1], "the forced config"
    path = CONFIG_DIR / lookup.name
    config = read_table(path, lookup.op).get(lookup.M)
    if config is None:
        return None, ""
    return config, f"{path}, batch size {lookup.M}"
