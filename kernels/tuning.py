"""Launch parameters of the row-moving kernels (permute_rows_kernel / permute_fused_kernel, unpermute_kernel): their
defaults, the search space a tuning run sweeps, and the tuned configs that a call reads for its shape and GPU.

A config is {"BLOCK_T": tokens per program, "BLOCK_H": hidden columns per program, "num_warps": ...}. Tuned configs
live in kernels/configs/<name>.json (config_name()): {"triton": version, "configs": {"<batch size>": config}}; a call
takes the entry of the nearest batch size, or the defaults without a file. The kernels have no pipelined loops, so
num_stages is not a parameter.
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
import typing
from pathlib import Path

import torch

from kernels import _launch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPS = ("permute", "unpermute")
KEYS = ("BLOCK_T", "BLOCK_H", "num_warps")
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
    """File name of the tuned configs of one shape: unpermute does not depend on the expert count, so has no E."""
    experts = f",E={E}" if op == "permute" else ""
    return f"{op}{experts},H={H},k={k},dtype={dtype_name(dtype)},device_name={device}.json"


def default_config(H: int, M: int, elem_bytes: int) -> dict:
    block_t, block_h = _launch.row_block(H, M, elem_bytes)
    return {"BLOCK_T": block_t, "BLOCK_H": block_h, "num_warps": _launch.num_warps(block_t * block_h)}


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
    default = default_config(H, M, elem_bytes)
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


@functools.lru_cache(maxsize=None)
def load_table(path: Path) -> dict[int, dict]:
    """{batch size: config} of a config file ({} when there is none); a malformed file is an error naming it."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        table = {int(m): dict(c) for m, c in data["configs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"tuned config file {path} is unreadable ({type(e).__name__}: {e}); fix or delete it") \
            from None
    for m, c in table.items():
        if set(c) != set(KEYS):
            raise ConfigError(f"tuned config file {path}, batch size {m}: needs exactly {', '.join(KEYS)}, got "
                              f"{sorted(c)}")
    return table


@contextlib.contextmanager
def configs_from(folder: Path):
    """Calls made inside read tuned configs from `folder` instead of kernels/configs/ (an empty or missing folder:
    the defaults)."""
    global CONFIG_DIR
    saved = CONFIG_DIR
    CONFIG_DIR = Path(folder)
    load_table.cache_clear()
    try:
        yield
    finally:
        CONFIG_DIR = saved
        load_table.cache_clear()


class Lookup(typing.NamedTuple):
    """What a call asked for: its op, shape and element size, and the config file name that answers it."""
    name: str
    op: str
    M: int
    H: int
    k: int
    elem_bytes: int


_forced: list[tuple[str, dict]] = []
_recording: list[list[Lookup]] = []


@contextlib.contextmanager
def forced(config: dict, op: str):
    """Calls of `op` made inside use this config (a tuning run timing its candidates); other ops are untouched."""
    _forced.append((op, config))
    try:
        yield
    finally:
        _forced.pop()


@contextlib.contextmanager
def recording():
    """Yields a list that collects a Lookup for every call made inside (what a call reads)."""
    seen: list[Lookup] = []
    _recording.append(seen)
    try:
        yield seen
    finally:
        _recording.pop()


def launch_config(op: str, M: int, H: int, k: int, dtype: torch.dtype, device: torch.device,
                  E: int | None = None) -> dict:
    """The config a call uses: a forced one, else the tuned entry of the nearest batch size for this shape and GPU,
    else the defaults. A tuned entry that cannot run for the shape is an error naming its file."""
    elem_bytes = dtype.itemsize
    name = config_name(op, H, k, dtype, device_name(device), E)
    for seen in _recording:
        seen.append(Lookup(name, op, M, H, k, elem_bytes))
    force = [config for forced_op, config in _forced if forced_op == op]
    if force:
        config, where = force[-1], "the forced config"
    else:
        path = CONFIG_DIR / name
        table = load_table(path)
        if not table:
            return default_config(H, M, elem_bytes)
        nearest = min(table, key=lambda m: (abs(m - M), m))
        config, where = table[nearest], f"{path}, batch size {nearest}"
    why = problem_with(config, op, H, k, elem_bytes)
    if why:
        raise ConfigError(f"{where}: {why}")
    return config
