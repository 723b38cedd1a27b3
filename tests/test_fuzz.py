"""Seeded mutation fuzzing: whatever a server sends, the failure is a BisqueError.

Bounded in count (and so in time): a few hundred mutated HDF5 bodies through the stream
decoder, mutated info documents through the parser. A body may happen to decode (a flipped
byte in the data region is just another value); what it may never do is raise anything
but a :class:`~aiobisque.BisqueError` naming the request.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np
import pytest

from aiobisque import BisqueError
from aiobisque.decode import StreamDecoder
from aiobisque.protocol import parse_info
from tests.hostile import hdf_image, info_json

SHAPE = (6, 5)
WHERE = "00-fuzz/array request #3 [0;5,0;4]"


def _bodies() -> dict[str, bytes]:
    data = np.arange(30, dtype=np.float32).reshape(SHAPE)

    def chunked(f: h5py.File) -> None:
        f.create_dataset("array", data=data, chunks=(2, 5), compression="gzip",
                         shuffle=True, fletcher32=True)

    def compact(f: h5py.File) -> None:
        space = h5py.h5s.create_simple(SHAPE)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        ds = h5py.h5d.create(f.id, b"array", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, data)

    return {"contiguous": hdf_image(data), "chunked": hdf_image(build=chunked),
            "compact": hdf_image(build=compact)}


BODIES = _bodies()


def mutate(body: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    kind = rng.choice(["flip", "bytes", "zero", "truncate", "insert", "splice", "ints"])
    # most of an image's structure sits in its first few KiB: aim there mostly
    def pos() -> int:
        return rng.randrange(min(len(b), 4096)) if rng.random() < 0.8 else rng.randrange(len(b))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[pos()] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        for _ in range(rng.randint(1, 16)):
            b[pos()] = rng.randrange(256)
    elif kind == "zero":
        at = pos()
        b[at : at + rng.randint(1, 64)] = bytes(min(64, len(b) - at))
    elif kind == "truncate":
        del b[rng.randrange(8, len(b)):]
    elif kind == "insert":
        at = pos()
        b[at:at] = rng.randbytes(rng.randint(1, 32))
    elif kind == "splice":
        at, src = pos(), pos()
        n = rng.randint(1, 256)
        b[at : at + n] = body[src : src + n]
    else:  # plausible-looking numbers where sizes and addresses live
        for _ in range(rng.randint(1, 4)):
            at = pos()
            b[at : at + 8] = rng.choice([2**63 - 1, 2**32, 0, 1, 2**62, 255]).to_bytes(8, "little")
    return bytes(b)


def decode(body: bytes, rng: random.Random) -> None:
    dest = np.zeros(SHAPE, np.float32)
    dec = StreamDecoder(shape=SHAPE, dtype=np.dtype(np.float32), dest=dest,
                        chunk_sel=(slice(None), slice(None)), where=WHERE)
    dec.start(len(body), {})
    at = 0
    while at < len(body):
        n = rng.randint(1, 2048)
        dec.feed(body[at : at + n])
        at += n
    dec.finish()


def check(fn: Callable[[], Any], what: str, failures: list[str]) -> None:
    try:
        fn()
    except BisqueError as exc:
        if "00-fuzz" not in str(exc):
            failures.append(f"{what}: {type(exc).__name__} does not name the request: {exc}")
    except Exception as exc:  # exactly what this test hunts
        failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:120]}")


@pytest.mark.parametrize("name", sorted(BODIES))
def test_mutated_hdf5_bodies_raise_only_bisque_errors(name: str) -> None:
    rng = random.Random(f"bodies-{name}")
    failures: list[str] = []
    for i in range(250):
        body = mutate(BODIES[name], rng)
        check(lambda body=body: decode(body, rng), f"{name} #{i}", failures)
    assert failures == [], f"{len(failures)} of 250 escaped the error tree: {failures[:5]}"


def _mutate_doc(doc: Any, rng: random.Random, depth: int = 0) -> Any:
    weird: list[Any] = [None, -1, 0, 2**62, 2**64, 1e308, "S0", "(2,3", "(1000000000,)f8",
                        "O", "", [], {}, [2**62, 0], "\x1b[31m", True, "V0", "m8", [1] * 70]
    if isinstance(doc, dict) and doc and rng.random() < 0.7:
        key = rng.choice(sorted(doc))
        return {**doc, key: _mutate_doc(doc[key], rng, depth + 1)}
    if isinstance(doc, list) and doc and rng.random() < 0.6:
        i = rng.randrange(len(doc))
        return [*doc[:i], _mutate_doc(doc[i], rng, depth + 1), *doc[i + 1:]]
    return rng.choice(weird)


def test_mutated_info_documents_raise_only_bisque_errors() -> None:
    rng = random.Random("info")
    docs = [info_json((4, 3)), info_json((5,), "int16"),
            {"headers": ["a", "b"], "types": ["float64", "int32"], "sizes": [5, 2]},
            {"group": [{"path": "/x", "type": "matrix"}], "meta": {"a": 1}}]
    failures: list[str] = []
    texts = ["[" * 100_000, '{"sizes": [' + "[" * 50_000 + "]", "\xff\xfe", "{}", "null"]
    for _ in range(400):
        doc = _mutate_doc(rng.choice(docs), rng)
        texts.append(json.dumps(doc))
    for i, text in enumerate(texts):
        def parse(text: str = text) -> None:
            info = parse_info(text, uniq="00-fuzz", path="array", url="http://h/t",
                              max_bytes=1 << 40)
            if info.dtype is not None and info.shape is not None:
                np.empty(tuple(min(s, 1) for s in info.shape), info.dtype)
        check(parse, f"info #{i} {text[:60]!r}", failures)
    assert failures == [], f"{len(failures)} escaped the error tree: {failures[:5]}"
