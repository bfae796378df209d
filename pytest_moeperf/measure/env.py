"""The GPU and software a measurement was taken on (recorded, never changed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import torch


def gpu_slug(device=None) -> str:
    """Baseline folder name from the device name, e.g. 'NVIDIA_H100_80GB_HBM3'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(device)).strip("_")


_SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "temperature.gpu",
               "power.draw", "power.limit", "clocks_event_reasons.active", "uuid")


def _smi_query(index: int, fields) -> list[str] | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    values = [v.strip() for v in out.stdout.strip().split(",")]
    return values if out.returncode == 0 and len(values) == len(fields) else None


def nvidia_smi(index: int) -> dict:
    """Clocks, temperature, power and throttle reasons as nvidia-smi reports them; fields it lacks are left out."""
    if shutil.which("nvidia-smi") is None:
        return {}
    values = _smi_query(index, _SMI_FIELDS)
    if values is not None:
        return dict(zip(_SMI_FIELDS, values))
    found = {}
    for field in _SMI_FIELDS:
        one = _smi_query(index, (field,))
        if one is not None:
            found[field] = one[0]
    return found


def snapshot(device=None) -> dict:
    import triton

    # plain strings: torch.__version__ is a str subclass that execnet (xdist workers -> controller) cannot send
    env = {"torch": str(torch.__version__), "triton": str(triton.__version__), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        dev = torch.device(device or "cuda")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        env.update(device=props.name, sm_count=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1), l2_mib=round(props.L2_cache_size / 2**20, 1),
                   capability=f"{props.major}.{props.minor}")
        env.update(nvidia_smi(physical_index(index)))
    return env


def physical_index(index: int) -> int:
    """nvidia-smi numbers GPUs physically; map through CUDA_VISIBLE_DEVICES when it lists plain indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [v for v in visible.split(",") if v.strip()]
    if parts and all(v.strip().isdigit() for v in parts) and index < len(parts):
        return int(parts[index])
    return index
