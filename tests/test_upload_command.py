"""``aiobisque upload``: the command line for uploads, against the embedded server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from aiobisque import Session
from aiobisque.cli import main
from aiobisque.server import TableServer, serve_in_thread
from aiobisque.server.imports import ImportFaults


@pytest.fixture
def srv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TableServer]:
    monkeypatch.setenv("BISQUE_PASSWORD", "wonderland")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    folder = tmp_path / "served"
    folder.mkdir()
    with serve_in_thread(folder, users={"alice": "wonderland"}) as server:
        yield server


def upload(srv: TableServer, *args: str) -> list[str]:
    return [srv.root, *args, "--user", "alice"]


def read(srv: TableServer, uniq: str, path: str) -> np.ndarray:
    with Session(srv.root, auth=("alice", "wonderland")) as session:
        return session.load_array(uniq, path)


def test_npy_upload_prints_the_uniq(srv: TableServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", data)
    assert main(["upload", *upload(srv, str(tmp_path / "a.npy"), "--name", "result")]) == 0
    uniq = capsys.readouterr().out.strip()
    assert uniq in srv.imports.uploads
    np.testing.assert_array_equal(read(srv, uniq, "result"), data)


def test_json_output_and_tags(srv: TableServer, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "a.npy", np.ones(3))
    status = main(["upload", *upload(srv, str(tmp_path / "a.npy"), "--name", "tagged",
                                     "--tags", "stage=final", "run=7", "--json")])
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "tagged.h5" and out["type"] == "table" and out["attempts"] == 1
    record = srv.imports.uploads[out["uniq"]]
    assert ("stage", "final") in record.tags and ("run", "7") in record.tags
    assert ("upload_id", out["upload_id"]) in record.tags


def test_hdf5_file_is_sent_as_is(srv: TableServer, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with h5py.File(tmp_path / "many.h5", "w") as h5:
        h5["g/a"] = np.arange(5)
        h5["b"] = np.eye(3)
    assert main(["upload", *upload(srv, str(tmp_path / "many.h5"), "--name", "many")]) == 0
    uniq = capsys.readouterr().out.strip()
    assert Path(srv.imports.uploads[uniq].file).read_bytes() == (tmp_path / "many.h5").read_bytes()
    np.testing.assert_array_equal(read(srv, uniq, "g/a"), np.arange(5))


def test_one_dataset_of_an_hdf5_file(srv: TableServer, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with h5py.File(tmp_path / "many.h5", "w") as h5:
        h5["g/a"] = np.arange(5)
        h5["b"] = np.eye(3)
    args = upload(srv, str(tmp_path / "many.h5"), "--name", "only", "--dataset", "b")
    assert main(["upload", *args]) == 0
    uniq = capsys.readouterr().out.strip()
    np.testing.assert_array_equal(read(srv, uniq, "only"), np.eye(3))


def test_structured_npy_is_a_table(srv: TableServer, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rows = np.array([(1, 2.0), (3, 4.0)], dtype=[("i", "<i4"), ("x", "<f8")])
    np.save(tmp_path / "rows.npy", rows)
    assert main(["upload", *upload(srv, str(tmp_path / "rows.npy"), "--name", "rows")]) == 0
    uniq = capsys.readouterr().out.strip()
    with h5py.File(srv.imports.uploads[uniq].file) as h5:
        np.testing.assert_array_equal(h5["rows"][...], rows)


@pytest.mark.parametrize(("make", "extra", "words"), [
    (lambda p: np.save(p / "o.npy", np.array([1, "a"], dtype=object)), ["o.npy"], "object"),
    (lambda p: None, ["missing.npy"], "no such file"),
    (lambda p: (p / "t.txt").write_text("x"), ["t.txt"], ".npy or HDF5"),
    (lambda p: (p / "fake.h5").write_text("x"), ["fake.h5"], "not an HDF5 file"),
    (lambda p: np.save(p / "a.npy", np.ones(2)), ["a.npy", "--tags", "novalue"], "NAME=VALUE"),
    (lambda p: np.save(p / "a.npy", np.ones(2)), ["a.npy", "--dataset", "x"], "HDF5 files"),
])
def test_bad_input_exits_2_before_sending(srv: TableServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          make: object, extra: list[str], words: str) -> None:
    make(tmp_path)  # type: ignore[operator]
    args = [srv.root, str(tmp_path / extra[0]), *extra[1:], "--name", "x", "--user", "alice"]
    assert main(["upload", *args]) == 2
    assert words in capsys.readouterr().err
    assert srv.imports.requests == 0


def test_bad_name_exits_2(srv: TableServer, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "a.npy", np.ones(2))
    assert main(["upload", *upload(srv, str(tmp_path / "a.npy"), "--name", "a/b")]) == 2
    assert "path separator" in capsys.readouterr().err


def test_anonymous_upload_exits_3(srv: TableServer, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "a.npy", np.ones(2))
    assert main(["upload", srv.root, str(tmp_path / "a.npy"), "--name", "anon"]) == 3
    assert "needs a login" in capsys.readouterr().err
    assert srv.imports.requests == 0


def test_uncertain_upload_exits_4(srv: TableServer, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "a.npy", np.ones(2))
    srv.imports.faults = ImportFaults(drop_answer=1)
    assert main(["upload", *upload(srv, str(tmp_path / "a.npy"), "--name", "lost")]) == 4
    err = capsys.readouterr().err
    assert "may or may not" in err and "upload_id=" in err
    assert srv.imports.requests == 1 and len(srv.imports.uploads) == 1


def test_root_from_the_environment_as_for_downloads(srv: TableServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "e.npy", np.arange(3, dtype=np.int16))
    monkeypatch.setenv("BISQUE_ROOT", srv.root)
    assert main(["upload", str(tmp_path / "e.npy"), "--name", "env", "--user", "alice"]) == 0
    uniq = capsys.readouterr().out.strip()
    np.testing.assert_array_equal(read(srv, uniq, "env"), np.arange(3, dtype=np.int16))
    monkeypatch.delenv("BISQUE_ROOT")
    assert main(["upload", str(tmp_path / "e.npy"), "--name", "env", "--user", "alice"]) == 2
    assert "no server given" in capsys.readouterr().err


def test_a_pytables_dataset_keeps_its_booleans(srv: TableServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import tables

    with tables.open_file(str(tmp_path / "t.h5"), "w") as f:
        t = f.create_table("/", "feat", {"n": tables.Int32Col(pos=0),
                                         "flag": tables.BoolCol(pos=1)})
        t.append([(1, True), (2, False)])
        t.flush()
    args = upload(srv, str(tmp_path / "t.h5"), "--name", "flags", "--dataset", "/feat")
    assert main(["upload", *args]) == 0
    uniq = capsys.readouterr().out.strip()
    with Session(srv.root, auth=("alice", "wonderland")) as session:
        info = session.info(uniq, "flags")
        got = session.load_table(uniq, "flags")
    assert info.columns == {"n": "int32", "flag": "bool"}
    assert got["flag"].dtype == np.bool_ and list(got["flag"]) == [True, False]


def test_an_interrupted_upload_names_its_upload_id(srv: TableServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import aiobisque.cli.upload

    def interrupted(coro: Any) -> Any:
        coro.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(aiobisque.cli.upload, "run", interrupted)
    np.save(tmp_path / "i.npy", np.arange(3))
    assert main(["upload", *upload(srv, str(tmp_path / "i.npy"), "--name", "int",
                                   "--tags", "upload_id=abc123")]) == 4
    err = capsys.readouterr().err
    assert "may or may not have been stored" in err and "upload_id=abc123" in err
