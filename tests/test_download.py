"""`seqjax download`: fetch, verify, unzip, record checksums; login-only datasets print instructions.

No test touches the network: the URL table is pointed at a local http.server on 127.0.0.1 or a file:// URL.
"""

import dataclasses
import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from seqjax.cli import build_parser
from seqjax.data import download as dl


def main(argv):
    """`seqjax ARGV` without cli.main, whose error handling imports the trainer (and JAX)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base URL, folder): a local HTTP server on 127.0.0.1 serving the folder, bypassing any proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "site"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def last_line(stderr):
    """The error line: stderr may also hold the progress line, which ends with its own newline."""
    assert stderr.endswith("\n") and "Traceback" not in stderr
    return stderr.rstrip("\n").split("\n")[-1]


def pin(monkeypatch, name, **changes):
    monkeypatch.setitem(dl.DATASETS, name, dataclasses.replace(dl.DATASETS[name], **changes))


ML100K = {"ml-100k/u.data": "1\t10\t5\t881250949\n2\t20\t3\t881250950\n", "ml-100k/u.item": "x\n",
          "ml-100k/u.user": "y\n"}


def test_fetch_over_http_verifies_pinned_checksums_and_unzips(served, tmp_path, monkeypatch, capsys):
    url, site = served
    data = make_zip(site / "ml-100k.zip", ML100K).read_bytes()
    pin(monkeypatch, "ml-100k", url=f"{url}/ml-100k.zip", sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest())
    out = tmp_path / "raw"
    assert main(["download", "ml-100k", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (out / "ml-100k/u.data").read_text() == ML100K["ml-100k/u.data"]
    assert (out / "SHA256SUMS").read_text() == f"{hashlib.sha256(data).hexdigest()}  ml-100k.zip\n"
    assert "matches the pinned checksum" in captured.out
    assert f"seqjax prepare --format movielens --input {out.as_posix()}/ml-100k/u.data" in captured.out
    assert "ml-100k.zip: 0.0/0.0 MiB" in captured.err  # the progress line
    assert not list(out.glob("*.part"))


def test_checksum_mismatch_is_an_error_and_leaves_nothing(served, tmp_path, monkeypatch, capsys):
    url, site = served
    make_zip(site / "ml-1m.zip", {"ml-1m/ratings.dat": "1::2::3::4\n"})
    pin(monkeypatch, "ml-1m", url=f"{url}/ml-1m.zip")  # the real pins: this zip cannot match them
    out = tmp_path / "raw"
    assert main(["download", "ml-1m", "--out", str(out)]) == 2
    err = last_line(capsys.readouterr().err)
    assert err.startswith("error: ") and "does not match the pinned sha256" in err
    assert f"{url}/ml-1m.zip" in err
    assert not (out / "ml-1m.zip").exists() and not list(out.glob("*.part")) and not (out / "ml-1m").exists()


def test_unpinned_download_records_its_sha256(tmp_path, monkeypatch, capsys):
    archive = make_zip(tmp_path / "CDNOW_master.zip", {"CDNOW_master.txt": " 00001 19970101  1   11.77\n"})
    pin(monkeypatch, "cdnow", url=archive.as_uri())  # file:// needs no server
    out = tmp_path / "raw"
    (out).mkdir()
    (out / "SHA256SUMS").write_text("0" * 64 + "  CDNOW_master.zip\n" + "1" * 64 + "  other.txt\n")
    files = dl.download("cdnow", out, echo=print)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert files == [out / "CDNOW_master.txt"] and files[0].is_file()
    # The stale line for the same file is replaced, others kept.
    assert (out / "SHA256SUMS").read_text() == "1" * 64 + f"  other.txt\n{digest}  CDNOW_master.zip\n"
    printed = capsys.readouterr().out
    assert f"sha256 {digest}" in printed and "recorded in" in printed
    assert "--format cdnow" in printed and "drop_duplicates=false" in printed


def test_archive_without_the_expected_files(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "CDNOW_master.zip", {"readme.txt": "no data\n"})
    pin(monkeypatch, "cdnow", url=archive.as_uri())
    with pytest.raises(dl.DownloadError, match="does not contain CDNOW_master.txt"):
        dl.download("cdnow", tmp_path / "raw", echo=lambda _: None)


def test_unreachable_server_is_a_one_line_error(served, tmp_path, monkeypatch, capsys):
    url, _ = served
    pin(monkeypatch, "cdnow", url=f"{url}/missing.zip")  # the local server answers 404
    assert main(["download", "cdnow", "--out", str(tmp_path / "raw")]) == 2
    err = last_line(capsys.readouterr().err)
    assert err.startswith("error: ") and "missing.zip" in err
    assert not list((tmp_path / "raw").glob("*.part"))


@pytest.mark.parametrize("name", ["taobao", "retailrocket", "yoochoose", "diginetica", "otto"])
def test_login_datasets_print_page_files_and_next_command(name, tmp_path, capsys):
    assert main(["download", name, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    d = dl.DATASETS[name]
    assert d.url == "" and d.page in out
    for f in d.files:
        assert f"{tmp_path.as_posix()}/{f}" in out
    assert f"seqjax prepare --format {name} " in out and f"seqjax download {name} --verify" in out
    assert not any(tmp_path.iterdir())  # nothing fetched, nothing written


def test_verify_prints_the_sha256_of_a_local_file(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text('{"session": 1, "events": []}\n')
    assert main(["download", "otto", "--verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}"
    assert f"seqjax prepare --format otto --input {tmp_path.as_posix()}/train.jsonl" in out
    assert main(["download", "otto", "--verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_verify_names_the_folder_above_a_subfolder_file(tmp_path, capsys):
    path = tmp_path / "ml-1m" / "ratings.dat"  # ml-1m's files sit in a subfolder of DIR
    path.parent.mkdir()
    path.write_text("1::2::3::978300760\n")
    assert main(["download", "ml-1m", "--verify", str(path)]) == 0
    assert f"next: seqjax prepare --format movielens --input {tmp_path.as_posix()}/ml-1m/ratings.dat" \
        in capsys.readouterr().out


def test_verify_checks_a_pinned_archive(tmp_path, capsys):
    path = make_zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "1::2::3::4\n"})
    assert main(["download", "ml-1m", "--verify", str(path)]) == 2
    assert "does not match the pinned" in capsys.readouterr().err


def test_real_table_is_well_formed():
    for name, d in dl.DATASETS.items():
        assert d.page.startswith("https://") and d.files and "{dir}" in d.prepare
        assert (d.url == "") == bool(d.how), name  # login-only datasets say what to fetch
        assert not d.sha256 or len(d.sha256) == 64
        assert f"--format {'movielens' if name.startswith('ml-') else name}" in d.prepare
