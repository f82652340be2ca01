"""Benchmark the CPU cost of writing activations by chunk size and codec, against ``np.save``.

The store writer hands zarr one chunk at a time (``array[region] = block``). Each call pays
zarr's fixed per-chunk cost (its event loop, the codec pipeline, one file) besides
compressing and storing the bytes, so the chunk size sets how much of the writer's CPU is
overhead. Measured here in one process, ``--repeats`` times in rotation, on the same data:

- ``zarr_<MiB>_<shuffle>``: float32 activation blocks of 16,384 rows × 128 features (one
  layer of one step of the digits recipe's probe tiled ×8; GELU-like values), written chunk
  by chunk into a local zarr array with Blosc-LZ4 at 1, 4 and 8 MiB per chunk, with bit
  shuffle (the store's codec) and byte shuffle (its codec before 0.2);
- ``zarr_4MiB_zstd``: zarr's default codec (Zstandard, level 0) at 4 MiB;
- ``np_save``: the same blocks written with ``np.save`` (no compression): the hand-written
  baseline.

Reported: CPU seconds (user + sys of this process, all threads) per GiB written, median and
[min, max]; ``ratio_to_store`` (to 4 MiB bit shuffle); bytes on disk per byte written.
``--store STORE`` writes real activations instead: those of the store's 128-wide layers at
its first done step (e.g. the digits recipe's store).

Run:  python benchmarks/bench_chunks.py [--blocks N] [--repeats N] [--store STORE] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
from _results import write_result

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_chunks.json"
ROWS, FEATURES = 16384, 128


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_zarr(folder: Path, data: np.ndarray, blocks: int, chunk_mib: int, codec: str) -> float:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    rows = chunk_mib * 2**20 // (FEATURES * data.itemsize)
    compressor = (ZstdCodec(level=0) if codec == "zstd"
                  else BloscCodec(cname="lz4", clevel=5, shuffle=codec))
    array = zarr.create_array(
        str(folder / "a.zarr"), shape=(blocks, ROWS, FEATURES), dtype=data.dtype,
        chunks=(1, rows, FEATURES), fill_value=np.nan, compressors=[compressor])
    start = _cpu()
    for block in range(blocks):
        for first in range(0, ROWS, rows):
            array[block, first:first + rows] = data[first:first + rows]
    return _cpu() - start


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_npy(folder: Path, data: np.ndarray, blocks: int) -> float:
    start = _cpu()
    for block in range(blocks):
        np.save(folder / f"block-{block}.npy", data)
    return _cpu() - start


def synthetic() -> np.ndarray:
    """The inputs of a hidden layer: GELU of a random projection (no repeated values)."""
    rng = np.random.default_rng(0)
    pre = rng.normal(size=(ROWS, FEATURES)) @ rng.normal(size=(FEATURES, FEATURES)) / 11.3
    return (0.5 * pre * (1 + np.tanh(0.7978845608 * (pre + 0.044715 * pre**3)))).astype(
        np.float32)


def activations_from(store: Path) -> np.ndarray:
    """``ROWS`` rows of the activations of every layer exactly ``FEATURES`` wide, at the
    store's first done step, stacked (and repeated if the probe is smaller)."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    step = int(np.flatnonzero(np.asarray(group["done"][:]))[0])
    layers = np.flatnonzero(np.asarray(group["width"][:]) == FEATURES)
    if not len(layers):
        raise SystemExit(f"{store}: no layer is {FEATURES} features wide")
    rows = np.concatenate([np.asarray(group["activations"][step, i, :, :FEATURES])
                           for i in layers])
    rows = np.concatenate([rows] * -(-ROWS // len(rows)))[:ROWS]
    return np.ascontiguousarray(rows, dtype=np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40, help="blocks of 8 MiB per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store", type=Path, default=None,
                        help="take the activations of a real audit store instead")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    data = synthetic() if args.store is None else activations_from(args.store)
    gib = args.blocks * data.nbytes / 2**30
    cases = {"zarr_1MiB_bitshuffle": lambda f: write_zarr(f, data, args.blocks, 1, "bitshuffle"),
             "zarr_4MiB_bitshuffle": lambda f: write_zarr(f, data, args.blocks, 4, "bitshuffle"),
             "zarr_8MiB_bitshuffle": lambda f: write_zarr(f, data, args.blocks, 8, "bitshuffle"),
             "zarr_4MiB_shuffle": lambda f: write_zarr(f, data, args.blocks, 4, "shuffle"),
             "zarr_4MiB_zstd": lambda f: write_zarr(f, data, args.blocks, 4, "zstd"),
             "np_save": lambda f: write_npy(f, data, args.blocks)}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    disk: dict[str, float] = {}
    names = list(cases)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            folder = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
            try:
                seconds[name].append(cases[name](folder) / gib)
                disk[name] = _disk_bytes(folder) / (args.blocks * data.nbytes)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, object] = {"data": str(args.store or "synthetic GELU features"),
                                 "gib_per_run": round(gib, 3), "repeats": args.repeats,
                                 "load_average": os.getloadavg()}
    base = statistics.median(seconds["zarr_4MiB_bitshuffle"])
    for name, values in seconds.items():
        result[name] = {"cpu_s_per_gib": round(statistics.median(values), 3),
                        "range": [round(min(values), 3), round(max(values), 3)],
                        "ratio_to_store": round(statistics.median(values) / base, 2),
                        "disk_per_byte": round(disk[name], 3)}
    print(write_result(result, args.out))


if __name__ == "__main__":
    main()
