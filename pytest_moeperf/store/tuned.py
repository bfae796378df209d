"""Writing the tuned configs a --moeperf-tune run found (kernels/tuning.py reads them): merged into the file of
each shape and GPU, sorted by batch size, atomically."""
from __future__ import annotations

from pathlib import Path

from pytest_moeperf.oracle.impls import load_kernels
from pytest_moeperf.store import files


def merge(folder: Path, name: str, winners: dict[int, dict | None], op: str) -> Path:
    """Write or replace the entries of these batch sizes in folder/name (op's file format), keeping the others; a
    winner of None (the default was not beaten) removes that batch size's entry, and a file left without entries is
    removed. A file that cannot be read is an error and is not overwritten."""
    tuning = load_kernels().tuning
    path = Path(folder) / name
    with files.file_lock(path):
        tuning.clear_cache()
        table = dict(tuning.read_table(path, op))  # raises tuning.ConfigError for a malformed file
        table.update(winners)
        table = {m: c for m, c in table.items() if c is not None}
        if table:
            files.write_json_atomic(path, tuning.file_data(op, table), sort_keys=False)
        else:
            path.unlink(missing_ok=True)
    tuning.clear_cache()
    return path


def write_all(results: list[dict]) -> tuple[list[tuple[Path, int, int]], list[str]]:
    """Results of tuning tests (TuneItem) merged into one file per shape and GPU in kernels/configs/: ([(path,
    entries written, batch sizes that keep the default)], errors)."""
    tuning = load_kernels().tuning  # the kernels as imported now (not bound at this module's import)
    by_file: dict[tuple[str, str], dict[int, dict | None]] = {}
    for r in results:
        by_file.setdefault((r["file"], r["op"]), {})[r["M"]] = r["config"] if r["kept"] else None
    written, errors = [], []
    for (name, op), winners in sorted(by_file.items()):
        try:
            path = merge(tuning.CONFIG_DIR, name, winners, op)
        except (tuning.ConfigError, OSError) as e:
            errors.append(f"tuned configs for {name} not written: {e}")
        else:
            kept = sum(c is not None for c in winners.values())
            written.append((path, kept, len(winners) - kept))
    return written, errors
