"""Writing the tuned configs a --moeperf-tune run found (kernels/tuning.py reads them): merged into the file of
each shape and GPU, sorted by batch size, atomically."""
from __future__ import annotations

from pathlib import Path

import triton

from kernels import tuning
from pytest_moeperf import files


def merge(folder: Path, name: str, winners: dict[int, dict]) -> Path:
    """Write or replace the entries of these batch sizes in folder/name, keeping the others. A file that cannot be
    read is an error and is not overwritten."""
    path = Path(folder) / name
    with files.file_lock(path):
        table = {}
        if path.exists():
            tuning.load_table.cache_clear()
            table = dict(tuning.load_table(path))  # raises tuning.ConfigError for a malformed file
        table.update(winners)
        data = {"triton": triton.__version__,
                "configs": {str(m): {key: table[m][key] for key in sorted(table[m])} for m in sorted(table)}}
        files.write_json_atomic(path, data, sort_keys=False)
    tuning.load_table.cache_clear()
    return path


def write_all(results: list[dict]) -> tuple[list[tuple[Path, int]], list[str]]:
    """Winners of tuning tests (results of TuneItem) merged into one file per shape and GPU in kernels/configs/:
    ([(path, entries)], errors)."""
    by_file: dict[str, dict[int, dict]] = {}
    for r in results:
        by_file.setdefault(r["file"], {})[r["M"]] = r["config"]
    written, errors = [], []
    for name, winners in sorted(by_file.items()):
        try:
            written.append((merge(tuning.CONFIG_DIR, name, winners), len(winners)))
        except tuning.ConfigError as e:
            errors.append(str(e))
    return written, errors

