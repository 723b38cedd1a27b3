"""The ``aiobisque`` command line, in-process, against the embedded server on a thread."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from aiobisque import Config, window
from aiobisque.cli import EXIT_AUTH, EXIT_FAILED, EXIT_OK, EXIT_USAGE, credentials, main
from aiobisque.config import MiB
from aiobisque.server import FaultPlan, TableServer, samples

PASSWORD = "s3cret-Pa55-word"  # distinctive, so any leak is easy to find
USERS = {"carol": PASSWORD, "alice": "wonderland"}
TOKEN = "TOKEN-xyz-123"


def SAMPLES(path: Path) -> None:
    samples.write_seed(path)
    samples.write_array(path, "vol", "volume", (40, 30, 20), dtype="float32", seed=1)
    samples.write_array(path, "vol", "grp/labels", (7, 11), dtype="uint16", seed=2)
    samples.write_table(path, "tab", "rows", nrows=12)
    samples.write_array(path, "open", "a", (5, 4), dtype="int16", seed=3)


SERVER_OPTIONS = {"users": USERS, "mex_tokens": {TOKEN: "carol"}, "public": ["open"]}


pytestmark = pytest.mark.usefixtures("clean_cli_env")


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("BISQUE_PASSWORD", PASSWORD)
    return ["--user", "carol"]


def expected(folder: Path, uniq: str, path: str) -> np.ndarray:
    return samples.expected(samples.resource_file(folder, uniq), path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# -- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["info"], ["download"], ["serve"], ["demo"]])
def test_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aiobisque")
    if command in ([], ["info"], ["download"]):
        assert "exit status:" in out and "3  authentication failed" in out


def test_help_states_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help wraps lines anywhere
    defaults = Config()
    assert (f"--concurrency N most requests in flight: the ceiling of the adaptive window, "
            f"which starts at {window.START} (default {defaults.concurrency})") in out
    assert f"(default {defaults.request_bytes / MiB:g})" in out
    assert f"bounds memory (default {defaults.inflight_bytes / MiB:g})" in out
    assert f"(default {max(1, 2 * defaults.request_bytes / MiB):g}: two requests" in out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["download", "--concurrency", "0"])
    assert info.value.code == EXIT_USAGE
    assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


# -- info ---------------------------------------------------------------------------------


def test_info_array(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                    login: list[str]) -> None:
    status, out, _ = run(capsys, "info", thread_server.root, samples.SEED_UNIQ, samples.SEED_PATH,
                         *login)
    assert status == EXIT_OK
    assert "shape: (5, 5, 5, 1)" in out and "dtype: int32" in out
    assert "125 elements, 500 B" in out and "meta ObjectType: DataArray<int32_t>" in out


def test_options_may_sit_between_positionals(capsys: pytest.CaptureFixture[str],
                                             thread_server: TableServer,
                                             login: list[str]) -> None:
    # "ROOT --user me UNIQ PATH": argparse alone calls UNIQ and PATH unrecognized
    status, out, _ = run(capsys, "info", thread_server.root, *login, samples.SEED_UNIQ,
                         "--json", samples.SEED_PATH)
    assert status == EXIT_OK and json.loads(out)["shape"] == [5, 5, 5, 1]
    with pytest.raises(SystemExit) as refused:
        run(capsys, "info", thread_server.root, *login, samples.SEED_UNIQ, samples.SEED_PATH,
            "surplus")
    assert refused.value.code == EXIT_USAGE
    assert "unrecognized arguments: surplus" in capsys.readouterr().err


def test_info_group_tree(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                         login: list[str]) -> None:
    status, out, _ = run(capsys, "info", thread_server.root, samples.SEED_UNIQ, *login)
    assert status == EXIT_OK
    assert "(group)" in out
    assert "│       ├── CellData/" in out
    assert "Phases  (5, 5, 5, 1) int32, 500 B" in out


def test_info_json_and_table(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                             login: list[str]) -> None:
    status, out, _ = run(capsys, "info", thread_server.root, "tab", "rows", "--json", *login)
    doc = json.loads(out)
    assert status == EXIT_OK and doc["kind"] == "table" and doc["shape"] == [12]
    # PyTables' column types, as BisQue names them
    assert doc["columns"] == {"id": "int32", "x": "float64", "label": "string"}
    status, out, _ = run(capsys, "info", thread_server.root, "vol", "--json", *login)
    tree = json.loads(out)
    assert [c["path"] for c in tree["children"]] == ["/grp", "/volume"]
    assert tree["children"][0]["children"][0]["shape"] == [7, 11]


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".h5"])
def test_download_a_table(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                          folder: Path, tmp_path: Path, login: list[str], suffix: str) -> None:
    out = tmp_path / f"rows{suffix}"
    status, stdout, err = run(capsys, "download", thread_server.root, "tab", "rows", "-o", out,
                              "--slices", "2:8", "--no-progress", *login)
    assert status == EXIT_OK, err
    assert f"{out}: (6,)" in stdout
    want = expected(folder, "tab", "rows")[2:8]
    if suffix == ".csv":
        lines = out.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "id,x,label" and len(lines) == 7
        assert lines[1].startswith(f"2,{float(want['x'][0])!r},row2")
    elif suffix == ".npy":
        got = np.load(out)
        assert list(got["label"]) == [b.decode() for b in want["label"]]
        np.testing.assert_array_equal(got["x"], want["x"])
    else:
        with h5py.File(out) as f:
            np.testing.assert_array_equal(f["rows"][()], want)


def test_info_root_from_environment(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISQUE_ROOT", thread_server.root)
    status, out, _ = run(capsys, "info", "open", "a")  # anonymous, public resource
    assert status == EXIT_OK and "shape: (4, 3)" not in out and "shape: (5, 4)" in out
    # a data_service URL names its server: no ROOT needed
    monkeypatch.delenv("BISQUE_ROOT")
    status, out, _ = run(capsys, "info", f"{thread_server.root}/data_service/open", "a")
    assert status == EXIT_OK and "dtype: int16" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "vol"], "no server given: pass ROOT"),
        (["info", "https://u:pw@host", "vol"], "ROOT must not contain credentials"),
        (["info", "ftp://host", "vol", "x"],
         "ROOT must start with http:// or https://, got 'ftp://host'"),
        # a server without its scheme is named as ROOT, not taken for a uniq
        (["info", "127.0.0.1:42053", "vol", "a"],
         "ROOT must start with http:// or https://, got '127.0.0.1:42053'"),
        (["info", "localhost:8080", "vol"],
         "ROOT must start with http:// or https://, got 'localhost:8080'"),
        (["download", "bisque.example.org", "vol", "v", "-o", "x.npy"],
         "ROOT must start with http:// or https://, got 'bisque.example.org'"),
        (["download", "carol:pw@h:80", "--from-list", "l.txt"],
         "ROOT must start with http:// or https://, got 'h:80'"),
        (["info", "http://h/data_service/vol", "vol", "a"],
         "ROOT must be a server's root URL such as https://host"),
        # credentials over plain http: the option that allows it, and a usage status
        (["info", "http://example.org", "vol", "a", "--user", "alice"],
         "pass --allow-insecure if you accept the risk"),
        (["download", "http://h", "vol", "v", "-o", "x.npy", "--mex-token-env", "MEX"],
         "pass --allow-insecure if you accept the risk"),
        # HDF5 options are not silently dropped for a .npy output
        (["download", "http://h", "vol", "v", "-o", "y.npy", "--compression", "gzip"],
         "--compression applies to .h5/.hdf5 outputs, not y.npy"),
        (["download", "http://h", "vol", "v", "-o", "y.npy", "--dataset", "d"],
         "--dataset applies to .h5/.hdf5 outputs, not y.npy"),
        (["download", "http://h", "vol"], "download needs UNIQ and PATH"),
        (["download", "http://h", "vol", "v"], "download needs -o FILE"),
        (["download", "http://h", "vol", "v", "-o", "x.zarr"], "must end with one of .npy"),
        (["download", "http://h", "vol", "v", "-o", "x.npy", "--slices", "1:2:3:4"],
         "cannot read the selection '1:2:3:4'"),
        (["download", "http://h", "vol", "v", "-o", "x.npy", "--slices", "[0, 1]"],
         "advanced indexing"),
        (["download", "http://h", "bad uniq", "v", "-o", "x.npy"], "not a BisQue resource"),
        (["download", "http://h", "vol", "-o", "x.npy", "--from-list", "l.txt"],
         "with --from-list give only ROOT"),
        (["info", "https://h", "vol", "--mex-token-env", "MEX"], "MEX is not set"),
    ],
)
def test_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str],
                         message: str) -> None:
    status, _out, err = run(capsys, *argv)
    assert status == EXIT_USAGE
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"aiobisque {argv[0]}: error: ")
    assert "allow_insecure=True" not in err and "pw" not in err


# -- download -----------------------------------------------------------------------------


def test_download_npy(capsys: pytest.CaptureFixture[str], thread_server: TableServer, folder: Path,
                      tmp_path: Path, login: list[str]) -> None:
    out_file = tmp_path / "v.npy"
    status, out, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o", out_file,
                           "--slices", "5:30, ::-2, -1", "--request-mb", "0.001",
                           "--block-mb", "0.002", "--concurrency", "3", *login)
    assert status == EXIT_OK, err
    want = expected(folder, "vol", "volume")[5:30, ::-2, -1]
    assert np.array_equal(np.load(out_file), want)
    assert f"{out_file}: (25, 15) float32" in out and "requests" in out


def test_download_hdf5(capsys: pytest.CaptureFixture[str], thread_server: TableServer, folder: Path,
                       tmp_path: Path, login: list[str]) -> None:
    out_file = tmp_path / "phases.h5"
    status, _, err = run(capsys, "download", thread_server.root, samples.SEED_UNIQ, samples.SEED_PATH,
                         "-o", out_file, "--compression", "gzip", "--dataset", "ms/phases",
                         *login)
    assert status == EXIT_OK, err
    with h5py.File(out_file, "r") as f:
        ds = f["ms/phases"]
        assert np.array_equal(ds[()], expected(folder, samples.SEED_UNIQ, samples.SEED_PATH))
        assert ds.compression == "gzip"
        assert ds.attrs["uniq"] == samples.SEED_UNIQ and ds.attrs["path"] == samples.SEED_PATH
        assert ds.attrs["selection"] == "..." and ds.attrs["root"] == thread_server.root
        assert json.loads(ds.attrs["meta"])["ObjectType"] == "DataArray<int32_t>"
    # the same command again: nothing to do
    status, out, _ = run(capsys, "download", thread_server.root, samples.SEED_UNIQ, samples.SEED_PATH,
                         "-o", out_file, "--compression", "gzip", "--dataset", "ms/phases",
                         *login)
    assert status == EXIT_OK and "already downloaded" in out


def test_download_root_from_environment(capsys: pytest.CaptureFixture[str],
                                        thread_server: TableServer, folder: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISQUE_ROOT", thread_server.root)
    status, _, err = run(capsys, "download", "open", "a", "-o", tmp_path / "a.npy")
    assert status == EXIT_OK, err
    assert np.array_equal(np.load(tmp_path / "a.npy"), expected(folder, "open", "a"))


def test_typo_in_path_is_a_clear_not_found(capsys: pytest.CaptureFixture[str],
                                           thread_server: TableServer, tmp_path: Path,
                                           login: list[str]) -> None:
    status, _, err = run(capsys, "download", thread_server.root, "vol", "grp/lables", "-o",
                         tmp_path / "x.npy", *login)
    assert status == EXIT_FAILED
    # real BisQue answers 400 "Unexpected symbol"; the client asks /grp what it holds
    assert err == ("aiobisque download: error: vol: no node 'lables' under /grp "
                   "(children: labels)\n")
    status, _, err = run(capsys, "info", thread_server.root, "00-noSuchThing", *login)
    assert status == EXIT_FAILED and "00-noSuchThing" in err and "not found" in err
    status, _, err = run(capsys, "download", thread_server.root, "vol", "grp", "-o",
                         tmp_path / "x.npy", *login)
    assert status == EXIT_FAILED and "is a group, not an array; arrays inside: /grp/labels" in err
    assert list(tmp_path.iterdir()) == []


def test_rerun_with_another_selection_is_refused(capsys: pytest.CaptureFixture[str],
                                                thread_server: TableServer, folder: Path,
                                                tmp_path: Path, login: list[str]) -> None:
    """A finished .npy file is skipped only when it provably holds the same download."""
    out_file = tmp_path / "full2.npy"
    argv = ["download", thread_server.root, "vol", "volume", "-o", out_file, *login]
    assert run(capsys, *argv, "--slices", "0")[0] == EXIT_OK
    status, out, _ = run(capsys, *argv, "--slices", "0")
    assert status == EXIT_OK and "already downloaded" in out
    status, out, err = run(capsys, *argv, "--slices", "1")
    assert status == EXIT_FAILED and "already downloaded" not in out
    assert (f"{out_file} already exists and is not this download (it was downloaded with "
            "selection '0', not '1'); rerun with --restart to replace it") in err
    volume = expected(folder, "vol", "volume")
    assert np.array_equal(np.load(out_file), volume[0])  # untouched
    assert run(capsys, *argv, "--slices", "1", "--restart")[0] == EXIT_OK
    assert np.array_equal(np.load(out_file), volume[1])
    status, out, _ = run(capsys, *argv, "--slices", "1")
    assert status == EXIT_OK and "already downloaded" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full2.npy",
                                                          "full2.npy.source.json"]


@pytest.mark.parametrize("slices", ["40", "1,2,3,4", "::0", "0, 0, 0, 0"])
def test_bad_selection_creates_no_file(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                                       tmp_path: Path, login: list[str], slices: str) -> None:
    status, _, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o",
                         tmp_path / "x.npy", "--slices", slices, *login)
    assert status == EXIT_USAGE and err.startswith("aiobisque download: error: ")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_output_creates_no_file(capsys: pytest.CaptureFixture[str],
                                           thread_server: TableServer, tmp_path: Path,
                                           login: list[str]) -> None:
    mine = tmp_path / "mine.npy"
    np.save(mine, np.zeros((3, 3)))
    status, _, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o", mine, *login)
    assert status == EXIT_FAILED
    assert "mine.npy already exists and is not this download (no mine.npy.source.json" in err
    assert list(tmp_path.iterdir()) == [mine] and np.load(mine).shape == (3, 3)


def test_permanent_failure_has_no_resume_hint(capsys: pytest.CaptureFixture[str],
                                              thread_server: TableServer, tmp_path: Path,
                                              login: list[str]) -> None:
    """A refused data request cannot be cured by a rerun: no hint, no preallocated .part."""
    thread_server.faults = FaultPlan(fail_first=10**6, error_statuses=(404,))
    try:
        status, _, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o",
                             tmp_path / "x.npy", *login)
    finally:
        thread_server.faults = FaultPlan()
    assert status == EXIT_FAILED and "(HTTP 404)" in err and err.count("\n") == 1
    assert "rerun" not in err and "resume" not in err
    assert list(tmp_path.iterdir()) == []


def test_selection_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                 thread_server: TableServer, tmp_path: Path,
                                                 login: list[str]) -> None:
    status, _, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o",
                         tmp_path / "x.npy", "--slices", "40", *login)
    assert status == EXIT_USAGE
    assert "index 40 is out of bounds for axis 0 with size 40" in err


def test_from_list_with_one_bad_entry(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                                      folder: Path, tmp_path: Path, login: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "wanted.txt"
    listing.write_text(
        "# uniq path output [slices]\n"
        "vol volume v.npy 0:10, ::2   # words after OUTPUT are the selection\n"
        "\n"
        "vol nowhere/at/all missing.npy\n"
        f"'{samples.SEED_UNIQ}' {samples.SEED_PATH} \"phases one.h5\"\n"
        "vol grp/labels labels.h5 '-1'\n"
    )
    status, out, _err = run(capsys, "download", thread_server.root, "--from-list", listing, "--jobs",
                           "2", *login)
    assert status == EXIT_FAILED
    assert "4 downloads: 3 done, 1 failed" in out
    assert "FAILED  missing.npy (vol/nowhere/at/all): vol: no node 'nowhere' under / " \
           "(children: grp, volume)" in out
    assert np.array_equal(np.load("v.npy"), expected(folder, "vol", "volume")[0:10, ::2])
    with h5py.File("phases one.h5", "r") as f:
        assert f["Phases"].shape == (5, 5, 5, 1)
    with h5py.File("labels.h5", "r") as f:
        assert np.array_equal(f["labels"][()], expected(folder, "vol", "grp/labels")[-1])
    assert out.count("done    ") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.h5", "phases one.h5", "v.npy", "v.npy.source.json", "wanted.txt"]


def test_from_list_rerun_fetches_no_data(capsys: pytest.CaptureFixture[str],
                                         thread_server: TableServer, tmp_path: Path,
                                         login: list[str], monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "wanted.txt"
    listing.write_text("vol volume a.npy ::2\nvol volume b.npy 1::2\nvol grp/labels c.h5\n"
                       "vol volume bad.npy 99\n")
    argv = ["download", thread_server.root, "--from-list", listing, *login]
    status, out, _ = run(capsys, *argv)
    assert status == EXIT_FAILED and "4 downloads: 3 done, 1 failed" in out
    assert "FAILED  bad.npy (vol/volume): index 99 is out of bounds" in out
    thread_server.stats.reset()
    status, out, _ = run(capsys, *argv)
    assert status == EXIT_FAILED and out.count("already downloaded") == 3
    assert thread_server.stats.requests["data"] == 0
    assert not list(tmp_path.glob("bad.npy*"))  # the failed line left nothing behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("vol volume\n", "wanted.txt:1: expected UNIQ PATH OUTPUT [SLICES], got 2 field(s)"),
        ("# nothing\n", "names no download"),
        ("vol volume 'a.npy\n", "wanted.txt:1: No closing quotation"),
        ("vol v a.npy\nvol v b.txt\n", "wanted.txt:2: cannot tell the output format"),
        ("vol v a.npy 1.5\n", "wanted.txt:1: cannot read the selection"),
    ],
)
def test_from_list_syntax_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 content: str, message: str) -> None:
    listing = tmp_path / "wanted.txt"
    listing.write_text(content)
    status, _, err = run(capsys, "download", "http://127.0.0.1:1", "--from-list", listing)
    assert status == EXIT_USAGE and message in err
    status, _, err = run(capsys, "download", "http://127.0.0.1:1", "--from-list",
                         tmp_path / "absent.txt")
    assert status == EXIT_USAGE and "cannot read the list" in err


# -- credentials --------------------------------------------------------------------------


def test_wrong_password_exits_3(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISQUE_PASSWORD", "not-the-password")
    status, out, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o",
                           tmp_path / "v.npy", "--user", "carol")
    assert status == EXIT_AUTH
    assert err == (f"aiobisque download: error: {thread_server.root} rejected the credentials of "
                   "user 'carol' (wrong user name or password?)\n")
    assert "not-the-password" not in out + err


def test_missing_password_without_terminal_exits_3(capsys: pytest.CaptureFixture[str],
                                                   thread_server: TableServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    status, _, err = run(capsys, "info", thread_server.root, "vol", "--user", "carol")
    assert status == EXIT_AUTH
    assert "no password for user 'carol': set $BISQUE_PASSWORD" in err
    # the hint names the netrc file actually read
    assert f"add 127.0.0.1 to $NETRC ({tmp_path / 'no-netrc'})," in err
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("HOME", str(tmp_path))
    status, _, err = run(capsys, "info", thread_server.root, "vol", "--user", "carol")
    assert status == EXIT_AUTH and "add 127.0.0.1 to ~/.netrc," in err


def test_password_prompt_on_a_terminal(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(credentials.getpass, "getpass", lambda prompt: prompts.append(prompt) or PASSWORD)
    status, _, err = run(capsys, "info", thread_server.root, "vol", "volume", "--user", "carol")
    assert status == EXIT_OK, err
    assert prompts == ["password for carol at 127.0.0.1: "]


def test_netrc(capsys: pytest.CaptureFixture[str], thread_server: TableServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> None:
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine 127.0.0.1 login carol password {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    status, _, err = run(capsys, "info", thread_server.root, "vol", "volume", "--user", "carol")
    assert status == EXIT_OK, err
    status, _, err = run(capsys, "info", thread_server.root, "vol", "volume", "-v")  # login from netrc
    assert status == EXIT_OK and "logging in as carol (from netrc)" in err
    # netrc holds carol, not alice: no password for alice
    status, _, err = run(capsys, "info", thread_server.root, "vol", "--user", "alice")
    assert status == EXIT_AUTH and "no password for user 'alice'" in err
    netrc_file.write_text(f"machine 127.0.0.1 login carol passwd {PASSWORD}\n")
    status, _, err = run(capsys, "info", thread_server.root, "vol", "--user", "carol")
    assert status == EXIT_AUTH and "not valid netrc syntax" in err
    assert PASSWORD not in err


def test_mex_token(capsys: pytest.CaptureFixture[str], thread_server: TableServer,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEX", TOKEN)
    status, _, err = run(capsys, "info", thread_server.root, "vol", "volume", "--mex-token-env", "MEX")
    assert status == EXIT_OK, err
    monkeypatch.setenv("MEX", "bad-token")
    status, _, err = run(capsys, "info", thread_server.root, "vol", "--mex-token-env", "MEX")
    assert status == EXIT_AUTH and "rejected the Mex token" in err
    assert "bad-token" not in err


def test_anonymous_on_a_private_resource_exits_3(capsys: pytest.CaptureFixture[str],
                                                 thread_server: TableServer) -> None:
    status, _, err = run(capsys, "info", thread_server.root, "vol", "volume")
    assert status == EXIT_AUTH and "401" in err


def test_password_never_appears_in_output_or_logs(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, thread_server: TableServer,
    tmp_path: Path, login: list[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    for argv in (
        ["info", thread_server.root, "vol", "-vv", *login],
        ["download", thread_server.root, "vol", "volume", "-o", tmp_path / "v.h5", "-vv",
         "--progress-interval", "0.0001", *login],
        ["download", thread_server.root, "vol", "nope", "-o", tmp_path / "w.npy", "-vv", *login],
        ["download", thread_server.root, "vol", "volume", "-o", tmp_path / "v.h5", "--slices", "1",
         "-vv", *login],
    ):
        status, out, err = run(capsys, *argv)
        seen.append(status)
        assert PASSWORD not in out + err
    assert seen == [EXIT_OK, EXIT_OK, EXIT_FAILED, EXIT_FAILED]
    assert caplog.records and PASSWORD not in caplog.text
    assert "GET " in caplog.text  # the debug log really was on


# -- progress -----------------------------------------------------------------------------


def test_progress_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str],
                                            thread_server: TableServer, tmp_path: Path,
                                            login: list[str]) -> None:
    status, _, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o",
                         tmp_path / "v.npy", "--progress-interval", "0.000001",
                         "--request-mb", "0.01", *login)
    assert status == EXIT_OK
    lines = [x for x in err.splitlines() if x.startswith("aiobisque: ")]
    assert lines and "requests" in lines[-1] and "retries" in lines[-1] and "ETA" in lines[-1]
    status, _, err = run(capsys, "download", thread_server.root, "vol", "volume", "-o",
                         tmp_path / "w.npy", "--progress-interval", "0.000001", "--no-progress",
                         *login)
    assert status == EXIT_OK and err == ""


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch, thread_server: TableServer,
                                    tmp_path: Path, login: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    status = main(["download", thread_server.root, "vol", "volume", "-o", str(tmp_path / "v.npy"),
                   "--request-mb", "0.01", *login])
    assert status == EXIT_OK
    shown = terminal.getvalue()
    assert "100%" in shown and "requests" in shown and "0 retries" in shown
    assert "B/s" in shown and "\r" in shown  # a bar redrawn in place
    assert "v.npy" in capsys.readouterr().out


async def test_main_inside_a_running_loop(capsys: pytest.CaptureFixture[str],
                                          thread_server: TableServer, login: list[str]) -> None:
    """From a notebook-like context (a loop already running) main still works."""
    status = main(["info", thread_server.root, "vol", "volume", *login])
    assert status == EXIT_OK and "shape: (40, 30, 20)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "loaded", "not_loaded"), [
    (["info", "--help"], "aiobisque.cli.info", ["aiobisque.server", "aiobisque.cli.demo"]),
    (["download", "--help"], "aiobisque.cli.download", ["aiobisque.server",
                                                         "aiobisque.cli.demo"]),
    (["--help"], None, ["aiobisque.server", "aiobisque.cli.demo", "aiobisque.cli.info"]),
    (["serve", "--help"], "aiobisque.server", ["aiobisque.cli.demo"]),
])
def test_only_the_command_being_run_is_loaded(argv: list[str], loaded: str | None,
                                              not_loaded: list[str]) -> None:
    import subprocess

    code = (
        "import sys\n"
        "from aiobisque.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(m for m in sys.modules if m.startswith('aiobisque')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    modules = done.stdout.split()[-1000:]
    assert "usage: aiobisque" in done.stdout
    if loaded:
        assert loaded in modules
    for name in not_loaded:
        assert name not in modules, f"{argv} imported {name}"


def test_demo_table_explains_itself(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(["demo", "--size-mb", "1", "--cache-dir", str(tmp_path), "--latency", "0.01",
                   "--bandwidth-mb", "8", "--total-bandwidth-mb", "64"])
    out = capsys.readouterr().out
    assert status == EXIT_OK, out
    lines = out.splitlines()
    seed = next(line for line in lines if line.startswith("seed Phases"))
    assert " B " in seed or "KiB" in seed  # 500 bytes are not '0.0 MB'
    volume = next(line for line in lines if line.startswith("volume, aiobisque"))
    assert "1.0 MiB" in volume and "MiB/s" in volume
    assert "emulated link: 10 ms per request, one connection at most 7.6 MiB/s, " \
           "all together at most 61.0 MiB/s" in out
    assert "capped by the per-connection rate" in out and "all results bit-exact" in out


def test_a_bad_event_loop_choice_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    monkeypatch.setenv("AIOBISQUE_LOOP", "bogus")
    status, _out, err = run(capsys, "info", "http://127.0.0.1:9", "vol")
    gc.collect()  # the command's coroutine was closed, not left to warn "never awaited"
    assert status == 2
    assert "AIOBISQUE_LOOP='bogus': expected 'asyncio' or 'uvloop'" in err
