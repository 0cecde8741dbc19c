"""Download, verify, resume and unpack, against a local HTTP server on 127.0.0.1 run by the tests."""

import dataclasses
import hashlib
import io
import json
import random
import re
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from popos.cli import main
from popos.data import DATASETS, Source
from popos.data.download import (
    LOCK_NAME,
    ChecksumError,
    DownloadError,
    ManualStepRequired,
    UnsafeArchiveError,
    download,
    safe_extract,
)

FILES = {"DS_ann/list.txt": b"x y\n" * 5000, "DS_ann/sub/b.bin": random.Random(0).randbytes(20000)}


def make_tar(path, files, extra=()):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path.read_bytes()


def make_zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path.read_bytes()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless told not to; ``truncate`` sends half the body."""

    def do_GET(self):
        srv = self.server
        data = srv.files.get(self.path)
        srv.requests.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and srv.honour_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if srv.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.honour_range, srv.truncate = {}, [], True, False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _local_network_only(monkeypatch):
    real = urllib.request.urlopen

    def guarded(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        if urllib.parse.urlparse(url).hostname != "127.0.0.1":
            raise AssertionError(f"test tried to reach the real network: {url}")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


def _spec(*sources):
    return dataclasses.replace(DATASETS["cofw"], sources=tuple(sources))


def _lock(root):
    return json.loads((root / "cofw" / LOCK_NAME).read_text())["files"]


def _assert_nothing_installed(root):
    ds = root / "cofw"
    assert not (ds / "DS_ann").exists()
    assert not (ds / "downloads" / "ann.tar.gz").exists()
    assert not (ds / LOCK_NAME).exists() or "ann.tar.gz" not in _lock(root)
    assert not [p for p in ds.rglob("*") if p.name.endswith(".partial")] if ds.exists() else True


def test_download_records_checksum_then_verifies(tmp_path, server, capsys):
    data = make_tar(tmp_path / "a.tar.gz", FILES)
    server.files["/ann.tar.gz"] = data
    spec = _spec(Source("ann.tar.gz", server.url + "/ann.tar.gz", folder="DS_ann"))
    root = tmp_path / "raw"
    assert download(spec, root, progress=False) == root / "cofw"
    assert (root / "cofw" / "DS_ann" / "sub" / "b.bin").read_bytes() == FILES["DS_ann/sub/b.bin"]
    entry = _lock(root)["ann.tar.gz"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["kind"] == "archive"
    out = capsys.readouterr().out
    assert "no published checksum" in out and "recorded in" in out and "installed into" in out
    # later runs verify the archive against the lock file and its unpacked files against their manifest
    n_requests = len(server.requests)
    download(spec, root, progress=False)
    out = capsys.readouterr().out
    assert "verified against the checksum recorded on" in out and "match their manifest" in out
    assert "already installed" in out and len(server.requests) == n_requests
    # an edited (same size) or deleted unpacked file is found and restored from the verified archive
    unpacked = root / "cofw" / "DS_ann"
    edited = bytearray(FILES["DS_ann/sub/b.bin"])
    edited[100] ^= 1
    (unpacked / "sub" / "b.bin").write_bytes(bytes(edited))
    download(spec, root, progress=False)
    out = capsys.readouterr().out
    assert "1 unpacked file(s) missing or changed (first: DS_ann/sub/b.bin); unpacking it again" in out
    assert (unpacked / "sub" / "b.bin").read_bytes() == FILES["DS_ann/sub/b.bin"]
    (unpacked / "list.txt").unlink()
    download(spec, root, progress=False)
    assert (unpacked / "list.txt").read_bytes() == FILES["DS_ann/list.txt"] and len(server.requests) == n_requests
    # with the archive deleted, a changed file is an error naming it (it cannot be restored)
    (root / "cofw" / "downloads" / "ann.tar.gz").unlink()
    download(spec, root, progress=False)
    assert "match the manifest (size and sha256) recorded on" in capsys.readouterr().out
    (unpacked / "list.txt").write_text("edited by the user")
    with pytest.raises(ChecksumError, match=r"DS_ann/list.txt: missing, or its size or sha256 changed .*put ann.tar"):
        download(spec, root, progress=False)
    server.files["/ann.tar.gz"] = data
    (root / "cofw" / "downloads" / "ann.tar.gz").write_bytes(data)
    # a changed archive is caught on the next run
    (root / "cofw" / "downloads" / "ann.tar.gz").write_bytes(make_tar(tmp_path / "b.tar.gz", {"DS_ann/x": b"1"}))
    with pytest.raises(ChecksumError, match="differs from .* recorded in"):
        download(spec, root, progress=False)


def test_published_checksum(tmp_path, server, capsys):
    data = make_zip(tmp_path / "a.zip", FILES)
    server.files["/ann.zip"] = data
    spec = _spec(Source("ann.zip", server.url + "/ann.zip", sha256=hashlib.sha256(data).hexdigest()))
    download(spec, tmp_path / "raw", progress=False)
    assert (tmp_path / "raw" / "cofw" / "DS_ann" / "list.txt").read_bytes() == FILES["DS_ann/list.txt"]
    assert "verified against the published checksum (registry)" in capsys.readouterr().out


def test_corrupt_download_installs_nothing(tmp_path, server):
    server.files["/ann.tar.gz"] = make_tar(tmp_path / "a.tar.gz", FILES)
    spec = _spec(Source("ann.tar.gz", server.url + "/ann.tar.gz", sha256="0" * 64))
    with pytest.raises(ChecksumError, match="does not match the published 0000.*nothing was installed"):
        download(spec, tmp_path / "raw", progress=False)
    _assert_nothing_installed(tmp_path / "raw")
    assert not (tmp_path / "raw" / "cofw" / "downloads" / "ann.tar.gz.part").exists()


def test_truncated_transfer_then_resume(tmp_path, server):
    data = make_tar(tmp_path / "a.tar.gz", FILES)
    server.files["/ann.tar.gz"] = data
    server.truncate = True
    spec = _spec(Source("ann.tar.gz", server.url + "/ann.tar.gz", sha256=hashlib.sha256(data).hexdigest()))
    root = tmp_path / "raw"
    with pytest.raises(DownloadError, match="rerun to resume"):
        download(spec, root, progress=False)
    part = root / "cofw" / "downloads" / "ann.tar.gz.part"
    assert part.stat().st_size == len(data) // 2
    _assert_nothing_installed(root)
    server.truncate = False
    download(spec, root, progress=False)
    assert server.requests[-1] == ("/ann.tar.gz", f"bytes={len(data) // 2}-")
    assert (root / "cofw" / "downloads" / "ann.tar.gz").read_bytes() == data
    assert not part.exists() and (root / "cofw" / "DS_ann" / "list.txt").is_file()


@pytest.mark.parametrize("honour_range", [True, False])
def test_resume_partial_download(tmp_path, server, honour_range):
    data = make_tar(tmp_path / "a.tar.gz", FILES)
    server.files["/ann.tar.gz"] = data
    server.honour_range = honour_range
    root = tmp_path / "raw"
    part = root / "cofw" / "downloads" / "ann.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    download(_spec(Source("ann.tar.gz", server.url + "/ann.tar.gz")), root, progress=False)
    assert server.requests == [("/ann.tar.gz", "bytes=1000-")]
    assert (root / "cofw" / "downloads" / "ann.tar.gz").read_bytes() == data  # a 200 answer restarts cleanly
    assert _lock(root)["ann.tar.gz"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_truncated_archive_installs_nothing(tmp_path, server):
    data = make_tar(tmp_path / "a.tar.gz", FILES)
    server.files["/ann.tar.gz"] = data[: len(data) // 2]
    with pytest.raises(ValueError, match="damaged or truncated archive"):
        download(_spec(Source("ann.tar.gz", server.url + "/ann.tar.gz")), tmp_path / "raw", progress=False)
    ds = tmp_path / "raw" / "cofw"
    assert not (ds / "DS_ann").exists() and not (ds / LOCK_NAME).exists()
    assert [p.name for p in ds.iterdir()] == ["downloads"]


def test_path_traversal_member_refused(tmp_path, server):
    server.files["/ann.tar.gz"] = make_tar(tmp_path / "a.tar.gz", {"DS_ann/ok.txt": b"1", "../evil.txt": b"2"})
    with pytest.raises(UnsafeArchiveError, match="'../evil.txt' would be written outside the target folder"):
        download(_spec(Source("ann.tar.gz", server.url + "/ann.tar.gz")), tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw" / "evil.txt").exists()
    _assert_nothing_installed(tmp_path / "raw")


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("members", "extra", "message"),
    [
        ({"/abs/evil.txt": b"1"}, (), "'/abs/evil.txt' would be written outside"),
        ({"a/../../evil.txt": b"1"}, (), "would be written outside"),
        ({}, (_link("a/link", "../../outside"),), "points outside the target folder"),
        ({}, (_link("a/link", "/etc/passwd"),), "points outside the target folder"),
        ({}, (_link("a/hard", "../outside", tarfile.LNKTYPE),), "points outside the target folder"),
        ({}, (_link("dev", "", tarfile.CHRTYPE),), "device or pipe"),
    ],
)
def test_safe_extract_tar_refuses(tmp_path, members, extra, message):
    archive = tmp_path / "x.tar.gz"
    make_tar(archive, {"a/ok.txt": b"ok", **members}, extra)
    target = tmp_path / "out" / "inner"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, target, progress=False)
    assert list(target.iterdir()) == [] and not (tmp_path / "out" / "outside").exists()


def test_safe_extract_keeps_links_inside_and_refuses_zip_escape(tmp_path):
    archive = tmp_path / "x.tar.gz"
    make_tar(archive, {"a/ok.txt": b"ok"}, (_link("a/b/link", "../ok.txt"),))
    safe_extract(archive, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "a" / "b" / "link").read_bytes() == b"ok"
    make_zip(tmp_path / "x.zip", {"ok.txt": b"1", "../../evil.txt": b"2"})
    with pytest.raises(UnsafeArchiveError, match="would be written outside"):
        safe_extract(tmp_path / "x.zip", tmp_path / "zout", progress=False)
    assert list((tmp_path / "zout").iterdir()) == []


def test_manual_source_prints_instructions_then_ingests(tmp_path, capsys):
    spec = _spec(Source("ann.tar.gz", "https://example.org/register", manual=True, folder="DS_ann", note="sign up"))
    root = tmp_path / "raw"
    with pytest.raises(ManualStepRequired, match="missing ann.tar.gz"):
        download(spec, root, progress=False)
    out = capsys.readouterr().out
    assert "https://example.org/register" in out and "sign up" in out
    assert f"put it:  {root / 'cofw' / 'downloads' / 'ann.tar.gz'}" in out
    assert f"or the unpacked folder: {root / 'cofw' / 'DS_ann'}/" in out and "--from DIR" in out
    have = tmp_path / "have"
    have.mkdir()
    make_tar(have / "ann.tar.gz", FILES)
    download(spec, root, from_dir=have, progress=False)
    assert (root / "cofw" / "DS_ann" / "list.txt").read_bytes() == FILES["DS_ann/list.txt"]
    assert (root / "cofw" / "downloads" / "ann.tar.gz").read_bytes() == (have / "ann.tar.gz").read_bytes()


def test_ingest_unpacked_folder_is_recorded_in_a_manifest(tmp_path, capsys):
    spec = _spec(Source("ann.tar.gz", "https://example.org/register", manual=True, folder="DS_ann"))
    have = tmp_path / "have"
    (have / "DS_ann" / "sub").mkdir(parents=True)
    (have / "DS_ann" / "sub" / "f.txt").write_text("abc")
    root = tmp_path / "raw"
    download(spec, root, from_dir=have, progress=False)
    assert (root / "cofw" / "DS_ann" / "sub" / "f.txt").read_text() == "abc"
    assert _lock(root)["ann.tar.gz"]["kind"] == "folder"
    capsys.readouterr()
    download(spec, root, progress=False)
    assert "match the manifest (size and sha256) recorded on" in capsys.readouterr().out
    (root / "cofw" / "DS_ann" / "sub" / "f.txt").write_text("abd")  # same size, other content
    with pytest.raises(ChecksumError, match=r"DS_ann/sub/f.txt: missing, or its size or sha256 changed"):
        download(spec, root, progress=False)


def test_host_gone_becomes_a_manual_step(tmp_path, server, capsys):
    spec = _spec(Source("ann.zip", server.url + "/gone.zip", note="try the mirror"))
    with pytest.raises(ManualStepRequired):
        download(spec, tmp_path / "raw", progress=False)
    out = capsys.readouterr().out
    assert "automatic download failed (HTTP Error 404" in out and "try the mirror" in out


def test_plain_file_source(tmp_path, server):
    server.files["/info.mat"] = b"MATLAB 5.0 MAT-file" + bytes(200)
    spec = _spec(Source("info.mat", server.url + "/info.mat", extract=False))
    download(spec, tmp_path / "raw", progress=False)
    assert (tmp_path / "raw" / "cofw" / "info.mat").read_bytes() == server.files["/info.mat"]
    assert _lock(tmp_path / "raw")["info.mat"]["kind"] == "file"


def test_cli_download_from_dir_with_real_spec(tmp_path, capsys):
    have = tmp_path / "have"
    have.mkdir()
    make_zip(have / "COFW_color.zip", {"COFW_color/COFW_train_color.mat": b"1", "COFW_color/COFW_test_color.mat": b"2"})
    root = tmp_path / "raw"
    assert main(["data", "download", "cofw", "--root", str(root), "--from", str(have)]) == 0
    assert (root / "cofw" / "COFW_color" / "COFW_test_color.mat").read_bytes() == b"2"
    assert main(["data", "download", "300w", "--root", str(root), "--from", str(have)]) == 2
    captured = capsys.readouterr()
    assert "5 file(s) must be fetched by hand" in captured.out and "helen.zip" in captured.out
    assert "popos data: error: 300w: missing afw.zip, helen.zip" in captured.err


def test_synth_and_unknown(tmp_path, capsys):
    download("synth", tmp_path, progress=False)
    assert "popos data synth" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        download("nope", tmp_path)


def test_from_dir_copies_never_links_the_users_file(tmp_path):
    spec = _spec(Source("ann.tar.gz", "https://example.org/register", manual=True, folder="DS_ann"))
    have = tmp_path / "have"
    have.mkdir()
    original = make_tar(have / "ann.tar.gz", FILES)
    root = tmp_path / "raw"
    download(spec, root, from_dir=have, progress=False)
    kept = root / "cofw" / "downloads" / "ann.tar.gz"
    assert kept.read_bytes() == original
    assert (have / "ann.tar.gz").stat().st_nlink == 1 and kept.stat().st_ino != (have / "ann.tar.gz").stat().st_ino
    with open(kept, "r+b") as f:  # an in-place write in downloads/ leaves the user's file as it was
        f.write(b"\0" * 16)
    assert (have / "ann.tar.gz").read_bytes() == original


@pytest.mark.parametrize("damage", ["truncated", "checksum"])
def test_messages_name_the_users_file_not_a_temporary_one(tmp_path, damage):
    have = tmp_path / "have"
    have.mkdir()
    data = make_tar(have / "ann.tar.gz", FILES)
    sha = "0" * 64 if damage == "checksum" else None
    if damage == "truncated":
        (have / "ann.tar.gz").write_bytes(data[: len(data) // 2])
    spec = _spec(Source("ann.tar.gz", "https://example.org/register", manual=True, folder="DS_ann", sha256=sha))
    with pytest.raises(ValueError) as info:
        download(spec, tmp_path / "raw", from_dir=have, progress=False)
    message = str(info.value)
    assert message.startswith(f"{have / 'ann.tar.gz'}: ") and ".partial" not in message and ".tmp" not in message
    _assert_nothing_installed(tmp_path / "raw")
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[]", r"'files': expected an object"),
        (b'{"files": []}', r"'files': expected an object .*got 'list'"),
        (b'{"files": {"ann.tar.gz": []}}', r"files\['ann.tar.gz'\]: expected an object, got 'list'"),
        (b'{"files": {"ann.tar.gz": {"kind": "zip"}}}', r"files\['ann.tar.gz'\].kind: expected one of archive"),
        (b'{"files": {"ann.tar.gz": {"kind": "archive", "sha256": 5, "recorded_at": "x"}}}',
         r"files\['ann.tar.gz'\].sha256: expected a sha256 \(64 hex digits\), got 5"),
        (b'{"files": {', r"line 1: expected JSON"),
        (b'{"files": {"\xff": {}}}', r"content: expected UTF-8 JSON text"),
    ],
)
def test_lock_file_of_the_wrong_shape_is_a_clear_error(tmp_path, content, message):
    from popos.data.download import LockFileError
    from popos.errors import UserError

    lock = tmp_path / "raw" / "cofw" / LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_bytes(content)
    spec = _spec(Source("ann.tar.gz", "https://example.org/register", manual=True, folder="DS_ann"))
    with pytest.raises(LockFileError, match=re.escape(str(lock)) + ": " + message) as info:
        download(spec, tmp_path / "raw", progress=False)
    assert isinstance(info.value, UserError) and "delete it" in str(info.value)


def test_deleted_plain_file_is_fetched_again(tmp_path, server, capsys):
    server.files["/info.mat"] = b"MATLAB 5.0 MAT-file" + bytes(200)
    spec = _spec(Source("info.mat", server.url + "/info.mat", extract=False))
    download(spec, tmp_path / "raw", progress=False)
    (tmp_path / "raw" / "cofw" / "info.mat").unlink()
    capsys.readouterr()
    download(spec, tmp_path / "raw", progress=False)
    assert (tmp_path / "raw" / "cofw" / "info.mat").read_bytes() == server.files["/info.mat"]
    assert "verified against the checksum recorded on" in capsys.readouterr().out


def test_entry_without_manifest_is_never_reported_verified(tmp_path, server, capsys):
    data = make_tar(tmp_path / "a.tar.gz", FILES)
    server.files["/ann.tar.gz"] = data
    spec = _spec(Source("ann.tar.gz", server.url + "/ann.tar.gz", folder="DS_ann"))
    root = tmp_path / "raw"
    download(spec, root, progress=False)
    lock = root / "cofw" / LOCK_NAME
    files = json.loads(lock.read_text())["files"]
    for key in ("manifest", "manifest_sha256"):  # as an older popos wrote it
        del files["ann.tar.gz"][key]
    lock.write_text(json.dumps({"files": files}))
    capsys.readouterr()
    download(spec, root, progress=False)  # the archive is there: unpacked again, a manifest written
    assert "no manifest of its unpacked files was recorded" in capsys.readouterr().out
    assert "manifest_sha256" in _lock(root)["ann.tar.gz"]
    lock.write_text(json.dumps({"files": files}))
    (root / "cofw" / "downloads" / "ann.tar.gz").unlink()
    download(spec, root, progress=False)
    out = capsys.readouterr().out
    assert "were NOT verified" in out and "NOT verified: ann.tar.gz" in out and "present and verified" not in out
