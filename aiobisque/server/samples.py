"""Sample HDF5 resources with deterministic content, for the demo, tests and benchmarks.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> seed_file = write_seed(folder)
>>> expected(seed_file, SEED_PATH).shape
(5, 5, 5, 1)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "SEED_PATH",
    "SEED_UNIQ",
    "expected",
    "resource_file",
    "write_array",
    "write_seed",
    "write_table",
]

SEED_UNIQ = "00-orJQLiXgqh8K955C6qzhyC"
SEED_PATH = "DataContainers/ImageDataContainer/CellData/Phases"
_SUFFIXES = (".h5", ".hdf5", ".dream3d", ".h5ebsd")
_BLOCK_BYTES = 16 << 20  # generate and write big arrays this much at a time


def resource_file(folder: str | os.PathLike[str], uniq: str, suffix: str = ".h5") -> Path:
    """The file holding ``uniq`` in ``folder``: an existing one (any suffix), else a new name."""
    for candidate in _SUFFIXES:
        path = Path(folder) / f"{uniq}{candidate}"
        if path.exists():
            return path
    return Path(folder) / f"{uniq}{suffix}"


def _dream3d_array(group: h5py.Group, name: str, data: np.ndarray[Any, Any]) -> None:
    # DREAM3D (SIMPL) describes each array by tuple and component dimensions, slowest first
    # in the file and fastest first in these attributes
    dataset = group.create_dataset(name, data=data)
    tuples = data.shape[:-1]
    dataset.attrs["ComponentDimensions"] = np.array(data.shape[-1:], dtype=np.uint64)
    dataset.attrs["DataArrayVersion"] = np.int32(2)
    dataset.attrs["ObjectType"] = np.bytes_(f"DataArray<{_simpl_type(data.dtype)}>")
    dataset.attrs["TupleDimensions"] = np.array(tuples[::-1], dtype=np.uint64)


def _simpl_type(dtype: np.dtype[Any]) -> str:
    return {"i": "int", "u": "uint"}.get(dtype.kind, "float") + (
        f"{dtype.itemsize * 8}_t" if dtype.kind in "iu" else ""
    )


def write_seed(folder: str | os.PathLike[str]) -> Path:
    """Write the seed example: ``{SEED_UNIQ}.dream3d`` holding :data:`SEED_PATH`.

    The array is a (5, 5, 5, 1) int32 two-phase microstructure (phases 1 and 2, the same
    on every call), with DREAM3D-like siblings and attributes around it.
    """
    path = Path(folder) / f"{SEED_UNIQ}.dream3d"
    z, y, x = np.indices((5, 5, 5))
    # a sphere of phase 2 in a matrix of phase 1, plus a deterministic speckle
    phases = np.where((z - 2) ** 2 + (y - 2) ** 2 + (x - 2) ** 2 <= 3, 2, 1)
    phases[(z * 7 + y * 3 + x) % 11 == 0] = 2
    phases = phases.astype(np.int32)[..., np.newaxis]
    features = (1 + (z // 3) * 4 + (y // 3) * 2 + (x // 3)).astype(np.int32)[..., np.newaxis]
    with h5py.File(path, "w") as h5:
        h5.attrs["FileVersion"] = np.bytes_("7.0")
        h5.attrs["DREAM3D Version"] = np.bytes_("6.5.171")
        container = h5.create_group("DataContainers/ImageDataContainer")
        container.attrs["DataContainerType"] = np.uint32(0)
        geometry = container.create_group("_SIMPL_GEOMETRY")
        geometry.attrs["GeometryName"] = np.bytes_("ImageGeometry")
        geometry.attrs["GeometryType"] = np.uint32(0)
        geometry.create_dataset("DIMENSIONS", data=np.array([5, 5, 5], dtype=np.int64))
        geometry.create_dataset("ORIGIN", data=np.zeros(3, dtype=np.float32))
        geometry.create_dataset("SPACING", data=np.full(3, 0.25, dtype=np.float32))
        cells = container.create_group("CellData")
        cells.attrs["AttributeMatrixType"] = np.uint32(3)
        cells.attrs["TupleDimensions"] = np.array([5, 5, 5], dtype=np.uint64)
        _dream3d_array(cells, "Phases", phases)
        _dream3d_array(cells, "FeatureIds", features)
        ensemble = container.create_group("CellEnsembleData")
        ensemble.attrs["AttributeMatrixType"] = np.uint32(11)
        ensemble.attrs["TupleDimensions"] = np.array([3], dtype=np.uint64)
        _dream3d_array(ensemble, "CrystalStructures", np.array([[999], [1], [0]], dtype=np.uint32))
        pipeline = h5.create_group("Pipeline")
        pipeline.attrs["Pipeline"] = np.bytes_('{"PipelineBuilder": {"Name": "seed"}}')
    return path


def _block(
    shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    """Deterministic values of any dtype (native order; the caller casts)."""
    native = dtype.newbyteorder("=")
    if dtype.kind == "f":
        work = np.float64 if dtype.itemsize > 4 else np.float32
        return rng.random(shape, dtype=work).astype(native, copy=False)
    if dtype.kind in "iu":
        info = np.iinfo(native)
        return rng.integers(info.min, info.max, size=shape, dtype=native, endpoint=True)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind == "c":
        part = np.float64 if dtype.itemsize > 8 else np.float32
        return (rng.random(shape, dtype=part) + 1j * rng.random(shape, dtype=part)).astype(native)
    # compound, strings, ...: random bytes (floats inside may be NaN; compare with bytes)
    raw = rng.bytes(math.prod(shape) * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def write_array(
    folder: str | os.PathLike[str],
    uniq: str,
    path: str,
    data_or_shape: np.ndarray[Any, Any] | Sequence[int],
    dtype: Any = None,
    seed: int = 0,
    chunks: Any = None,
    compression: str | None = None,
) -> Path:
    """Write one array as node ``path`` of resource ``uniq`` (the file is created or extended).

    ``data_or_shape`` is the data itself, or a shape to fill with deterministic values
    from ``seed`` (``dtype`` default float32; any byte order, e.g. ``">f4"``). Generated
    arrays are written in ~16 MiB blocks, so a 1 GiB volume never exists twice in memory.
    An existing node at ``path`` is replaced. Returns the file's path.
    """
    file = resource_file(folder, uniq)
    with h5py.File(file, "a") as h5:
        if path in h5:
            del h5[path]
        if isinstance(data_or_shape, np.ndarray):
            data = data_or_shape if dtype is None else data_or_shape.astype(dtype)
            h5.create_dataset(path, data=data, chunks=chunks, compression=compression)
            return file
        shape = tuple(int(n) for n in data_or_shape)
        target = np.dtype("float32" if dtype is None else dtype)
        dataset = h5.create_dataset(
            path, shape=shape, dtype=target, chunks=chunks, compression=compression
        )
        if not shape:
            dataset[()] = _block((), target, np.random.default_rng(seed)).astype(target)
            return file
        row_bytes = max(1, math.prod(shape[1:]) * target.itemsize)
        rows = max(1, _BLOCK_BYTES // row_bytes)
        for index, start in enumerate(range(0, shape[0], rows)):
            stop = min(shape[0], start + rows)
            rng = np.random.default_rng([seed, index])
            dataset[start:stop] = _block((stop - start, *shape[1:]), target, rng).astype(
                target, copy=False
            )
    return file


def write_table(
    folder: str | os.PathLike[str],
    uniq: str,
    path: str,
    nrows: int = 10,
    seed: int = 0,
) -> Path:
    """Write a small PyTables-style compound table (``CLASS="TABLE"``, ``FIELD_i_NAME``...).

    Columns: ``id`` (int32, 0..nrows-1), ``x`` (float64), ``label`` (``S8``).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype([("id", "<i4"), ("x", "<f8"), ("label", "S8")])
    rows = np.zeros(nrows, dtype=dtype)
    rows["id"] = np.arange(nrows)
    rows["x"] = rng.random(nrows)
    rows["label"] = [f"row{i}".encode() for i in range(nrows)]
    file = resource_file(folder, uniq)
    with h5py.File(file, "a") as h5:
        if path in h5:
            del h5[path]
        table = h5.create_dataset(
            path, data=rows, maxshape=(None,), chunks=(max(1, min(nrows, 1024)),)
        )
        table.attrs["CLASS"] = np.bytes_("TABLE")
        table.attrs["VERSION"] = np.bytes_("2.7")
        table.attrs["TITLE"] = np.bytes_("sample table")
        table.attrs["NROWS"] = np.int64(nrows)
        table.attrs["units"] = np.bytes_("mm")
        for i, name in enumerate(dtype.names or ()):
            table.attrs[f"FIELD_{i}_NAME"] = np.bytes_(name)
            table.attrs[f"FIELD_{i}_FILL"] = np.zeros((), dtype=dtype[name])
    return file


def expected(file: str | os.PathLike[str], hdf_path: str) -> np.ndarray[Any, Any]:
    """The whole array at ``hdf_path`` as h5py reads it (what a download must equal)."""
    with h5py.File(file, "r") as h5:
        return np.asarray(h5[hdf_path][()])
