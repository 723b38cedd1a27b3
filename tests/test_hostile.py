"""Hostile or broken servers: every bad body is refused before it can do harm."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from aiohttp import web

from aiobisque import (
    BisqueSession,
    DownloadError,
    NotFoundError,
    ProtocolError,
    ResponseTooLargeError,
)
from tests.conftest import FAST_RETRY, USER
from tests.hostile import Hostile, body, hdf_image, hostile, info_json

GOOD = np.arange(12, dtype=np.float32).reshape(4, 3)


async def load(h: Hostile, **options: Any) -> np.ndarray:
    async with BisqueSession(h.root, auth=USER, retry=FAST_RETRY) as bq:
        return await bq.table.load_array("00-x", "array", **options)


async def test_well_formed_body_is_accepted() -> None:
    async with hostile() as h:
        h.data = body(hdf_image(GOOD))
        np.testing.assert_array_equal(await load(h), GOOD)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (hdf_image(np.zeros((4, 4), np.float32)), "sent shape"),
        (hdf_image(np.zeros((4, 3), np.int32)), "sent type"),
        (hdf_image(GOOD, lambda f: f.create_dataset("extra", data=[1])), "exactly one dataset"),
        (hdf_image(build=lambda f: f.create_group("array")), "not a dataset"),
        (b"<html><body>Please log in</body></html>", "not an HDF5 image"),
        (b"PK\x03\x04 a zip file, not hdf5", "not an HDF5 image"),
    ],
)
async def test_bad_bodies_raise_protocol_error(payload: bytes, message: str) -> None:
    async with hostile() as h:
        h.data = body(payload)
        with pytest.raises(ProtocolError, match=message):
            await load(h)
        assert len([p for p in h.paths if p.endswith("format:hdf")]) == 1  # not retried


async def test_html_login_page_instead_of_info() -> None:
    async with hostile() as h:
        h.info = "<html><form>login</form></html>"
        with pytest.raises(ProtocolError, match="not JSON"):
            await load(h)


async def test_info_without_sizes_is_not_an_array() -> None:
    async with hostile() as h:
        h.info = {"group": [{"path": "/array/x", "type": "matrix"}]}
        with pytest.raises(NotFoundError, match="group"):
            await load(h)


async def test_absurd_sizes_are_refused_before_allocating() -> None:
    async with hostile() as h:
        h.info = info_json((10**12, 10), "float64")
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLargeError, match="max_bytes"):
                await load(h)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20 * 2**20
        # a user who really means it can raise the limit (and then the sizes must be sane)
        h.info = info_json((4, 3))
        h.data = body(hdf_image(GOOD))
        np.testing.assert_array_equal(await load(h, max_bytes=48), GOOD)
        with pytest.raises(ResponseTooLargeError, match="max_bytes"):
            await load(h, max_bytes=47)


async def test_gzip_bomb_is_cut_off_with_bounded_memory() -> None:
    bomb = gzip.compress(b"\0" * (256 * 2**20), compresslevel=9)  # 256 MiB -> ~250 kB

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"},
                            content_type="application/x-hdf5")

    async with hostile() as h:
        h.data = handler
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLargeError, match="grew beyond"):
                await load(h)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 32 * 2**20


async def test_compressed_chunked_image_is_decoded() -> None:
    payload = hdf_image(build=lambda f: f.create_dataset(
        "array", data=GOOD.astype(">f4"), chunks=(2, 2), compression="gzip"))
    async with hostile() as h:
        h.data = body(payload)
        np.testing.assert_array_equal(await load(h), GOOD)


def _external_images(tmp: Path) -> dict[str, bytes]:
    target = tmp / "target.h5"
    with h5py.File(target, "w") as f:
        f["x"] = GOOD
    raw = tmp / "raw.bin"
    raw.write_bytes(GOOD.tobytes())
    fifo = tmp / "fifo"
    os.mkfifo(fifo)  # opening this for reading would block: a second tripwire

    def external_storage(f: h5py.File) -> None:
        f.create_dataset("array", shape=(4, 3), dtype="<f4", external=[(str(fifo), 0, 48)])

    def external_link(f: h5py.File) -> None:
        f["array"] = h5py.ExternalLink(str(target), "/x")

    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="<f4")
        layout[:] = h5py.VirtualSource(str(target), "x", shape=(4, 3))
        f.create_virtual_dataset("array", layout)

    return {name: hdf_image(build=fn) for name, fn in
            [("external storage", external_storage), ("external link", external_link),
             ("virtual", virtual)]}


@pytest.mark.parametrize("kind", ["external storage", "external link", "virtual"])
async def test_images_that_would_open_local_files_are_refused(tmp_path: Path, kind: str) -> None:
    payload = _external_images(tmp_path)[kind]
    opened: list[str] = []
    armed = threading.Event()

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if armed.is_set() and event == "open" and str(tmp_path) in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # cannot be removed: it only records while armed
    async with hostile() as h:
        h.data = body(payload)
        armed.set()
        try:
            with pytest.raises(ProtocolError, match=r"refused|ExternalLink"):
                await load(h)
        finally:
            armed.clear()
    assert opened == []


@pytest.mark.parametrize("header", ["Content-MD5", "x-content-md5"])
async def test_checksums_are_verified(header: str) -> None:
    payload = hdf_image(GOOD)
    digest = hashlib.md5(payload).digest()
    right = base64.b64encode(digest).decode() if header == "Content-MD5" else digest.hex()
    async with hostile() as h:
        h.data = body(payload, **{header: right})
        np.testing.assert_array_equal(await load(h), GOOD)
        h.data = body(payload, **{header: base64.b64encode(b"x" * 16).decode()
                                  if header == "Content-MD5" else "0" * 32})
        with pytest.raises(DownloadError, match="MD5"):
            await load(h)


_PLUGIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
typedef int H5Z_filter_t;
typedef struct { int version; H5Z_filter_t id; unsigned encoder_present;
  unsigned decoder_present; const char *name; void *can_apply; void *set_local;
  size_t (*filter)(unsigned, size_t, const unsigned[], size_t, size_t*, void**); } cls_t;
static size_t identity(unsigned f, size_t n, const unsigned v[], size_t nbytes, size_t *s,
                       void **b) { return nbytes; }
static const cls_t cls = {1, 32099, 1, 1, "aiobisque-test-plugin", NULL, NULL, identity};
__attribute__((constructor)) static void ran(void) {
  const char *m = getenv("AIOBISQUE_PLUGIN_MARKER");
  if (m) { FILE *f = fopen(m, "a"); if (f) { fputs("loaded\n", f); fclose(f); } }
}
int H5PLget_plugin_type(void) { return 0; }
const void *H5PLget_plugin_info(void) { return &cls; }
"""

_PLUGIN_BODY = r"""
import io, sys, h5py, numpy as np
h5py.h5pl.prepend(sys.argv[1].encode())
buf = io.BytesIO()
with h5py.File(buf, "w") as f:
    f.create_dataset("array", data=np.arange(12, dtype=np.float32).reshape(4, 3),
                     chunks=(2, 3), compression=32099, allow_unknown_filter=True)
open(sys.argv[2], "wb").write(buf.getvalue())
"""


def _plugin_image(tmp_path: Path) -> Path:
    """Build the plugin into ``tmp_path`` and an image using its filter (another process:
    loading the plugin here would spoil the test)."""
    (tmp_path / "plugin.c").write_text(_PLUGIN_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libtestfilter.so"),
                    str(tmp_path / "plugin.c")], check=True, timeout=60)
    image = tmp_path / "body.h5"
    subprocess.run([sys.executable, "-c", _PLUGIN_BODY, str(tmp_path), str(image)],
                   check=True, timeout=60)
    return image


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the plugin")
async def test_filter_plugins_are_never_loaded(tmp_path: Path) -> None:
    """A body naming an unregistered filter must not make HDF5 dlopen whatever sits in its
    plugin path: the plugin here records in a file that its code ran."""
    image = _plugin_image(tmp_path)
    marker = tmp_path / "marker"
    os.environ["AIOBISQUE_PLUGIN_MARKER"] = str(marker)
    h5py.h5pl.prepend(str(tmp_path).encode())
    try:
        async with hostile() as h:
            h.data = body(image.read_bytes())
            with pytest.raises(ProtocolError, match="filter"):
                await load(h)
    finally:
        h5py.h5pl.remove(0)
        del os.environ["AIOBISQUE_PLUGIN_MARKER"]
    assert not marker.exists(), "HDF5 loaded a filter plugin named by the server"


def _bomb(ratio: int) -> bytes:
    """A (4, 3) float32 image whose one gzip chunk inflates to ``48 * ratio`` bytes."""
    def build(f: h5py.File) -> None:
        ds = f.create_dataset("array", shape=(4, 3), dtype=np.float32, chunks=(4, 3),
                              compression="gzip")
        ds.id.write_direct_chunk((0, 0), zlib.compress(bytes(48 * ratio), 9))
    return hdf_image(build=build)


async def test_compressed_chunk_bomb_is_refused() -> None:
    payload = _bomb(1_000_000)  # 48 MB from a 47 KB stream
    assert len(payload) < 100_000
    async with hostile() as h:
        h.data = body(payload)
        with pytest.raises(ProtocolError, match="inflates beyond"):
            await load(h)


async def test_chunks_larger_than_the_data_are_refused() -> None:
    def build(f: h5py.File) -> None:
        f.create_dataset("array", data=GOOD, maxshape=(None, None), chunks=(100_000, 1000),
                         compression="gzip")
    async with hostile() as h:
        h.data = body(hdf_image(build=build))
        with pytest.raises(ProtocolError, match="larger than the 48 bytes planned"):
            await load(h)


async def test_a_huge_declared_array_is_planned_lazily(tmp_path: Path) -> None:
    """2**44 bytes declared: the first data request goes out at once, with no memory spent
    on planning millions of blocks before it (it used to take 28 s and 841 MiB)."""
    from aiobisque.bulk import BulkDownloader, Target

    first: list[float] = []

    async def refuse(request: web.Request) -> web.Response:
        first.append(time.monotonic())
        return web.Response(status=404, text="gone")

    async with hostile() as h:
        h.info = {"sizes": [2**21, 2**21], "types": ["float32"]}
        h.data = refuse
        async with BisqueSession(h.root, auth=USER, retry=FAST_RETRY,
                                 max_bytes=1 << 50) as bq:
            started = time.monotonic()
            tracemalloc.start()
            try:
                with pytest.raises(NotFoundError):
                    async with asyncio.timeout(20):
                        await BulkDownloader(bq.table).download(
                            Target("00-x", "array", tmp_path / "huge.h5"))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert first and first[0] - started < 3
    # the blocks' buffers in flight (8 of 8 MiB by default) and little else
    assert peak < 96 * 1024 * 1024
    assert os.listdir(tmp_path) == []  # failed for good before any block: no litter
