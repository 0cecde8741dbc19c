"""Fetch, verify and safely unpack the raw files of a dataset (``popos data download NAME``).

Layout under the raw root: ``<root>/<name>/`` holds the unpacked data, ``<root>/<name>/downloads/`` the
archives (kept so that they can be verified again) and the manifests of what they unpacked,
``<root>/<name>/popos.lock.json`` the checksums.

* **Resumable**: a download goes to ``<file>.part`` and continues with an HTTP ``Range`` request when
  rerun; it is renamed to its final name only once complete and verified.
* **Verified**: an archive or file against the sha256 published in the registry where there is one;
  otherwise the sha256 of the first download (or ingest) is recorded in the lock file and every later run
  checks the file against it. What an archive unpacked, and an unpacked folder the user supplied, is
  listed with each file's size and sha256 in a manifest (``downloads/<file>.manifest.json``, itself
  checksummed in the lock file); every rerun checks every listed file. A file deleted or edited inside an
  unpacked archive is restored by unpacking the verified archive again; in a user-supplied folder (or
  once the archive was deleted) it is an error naming the file. The output says which check was made.
* **Safe**: zip and tar members that would land outside the dataset folder (absolute paths, ``..``,
  links pointing out, device files) are refused; archives are unpacked into a temporary folder and moved
  into place only when complete, and the lock entry that marks a file installed is written last.
* **Your files stay yours**: ``--from DIR`` copies (or reflinks) files into ``downloads/``, never links
  them, so nothing written there changes the originals; messages name the file as you gave it.
* **Manual steps**: files behind a registration or a browser (and files whose host is gone) are listed
  with where to get them, the name they must have and the folder to put them in; ``--from DIR`` ingests
  archives or unpacked folders the user already has.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from popos.data.registry import DatasetSpec, Source, get_dataset
from popos.errors import UserError
from popos.io import atomic_path, copy_file, write_text_atomic

LOCK_NAME = "popos.lock.json"
DOWNLOADS = "downloads"
CHUNK = 1 << 20
# Python's own "data" filter (3.10.12+, 3.11.4+) as a second line behind the checks below.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class DownloadError(UserError, ValueError):
    """A download failed or stopped early; the message says whether rerunning resumes it."""


class ChecksumError(UserError, ValueError):
    """A file's sha256 differs from the published or recorded one; nothing was installed."""


class UnsafeArchiveError(UserError, ValueError):
    """An archive member would be written outside the target folder; nothing was installed."""


class ManualStepRequired(UserError, ValueError):
    """Some files must be fetched by hand; the instructions were printed."""


class LockFileError(UserError, ValueError):
    """``popos.lock.json`` (or a manifest it points to) is not what popos writes; the message names the field."""


class _Unavailable(Exception):
    """A source could not be obtained automatically (manual by nature, or its host failed)."""


def _say(spec: DatasetSpec, text: str) -> None:
    print(f"{spec.name}: {text}", flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- checksums, the lock file, manifests
def sha256_file(path: Path, *, progress: bool = True) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (a progress bar for files over 64 MiB)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress or size < 1 << 26
    ) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = {  # kind of entry -> the fields it must have
    "archive": ("sha256", "recorded_at"),
    "file": ("sha256", "recorded_at"),
    "folder": ("manifest", "manifest_sha256", "recorded_at"),
}
_TEXT_FIELDS = ("manifest", "recorded_at", "origin", "folder")
_SHA_FIELDS = ("sha256", "manifest_sha256")


def _lock_error(path: Path, where: str, expected: str, got: object) -> LockFileError:
    return LockFileError(
        f"{path}: {where}: expected {expected}, got {got!r}; fix the file, or delete it (or the entry) to re-record"
    )


def _read_lock(path: Path) -> dict[str, dict]:
    """The ``files`` of a lock file, every entry checked; :class:`LockFileError` naming the field otherwise."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _lock_error(path, "content", "UTF-8 JSON text", "undecodable bytes") from None
    except json.JSONDecodeError as exc:
        raise _lock_error(path, f"line {exc.lineno}", "JSON", exc.msg) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        got = type(doc.get("files")).__name__ if isinstance(doc, dict) else type(doc).__name__
        raise _lock_error(path, "'files'", 'an object {"files": {<file name>: <entry>}}', got)
    for name, entry in doc["files"].items():
        where = f"files[{name!r}]"
        if not isinstance(entry, dict):
            raise _lock_error(path, where, "an object", type(entry).__name__)
        if entry.get("kind") not in _REQUIRED:
            raise _lock_error(path, f"{where}.kind", f"one of {', '.join(_REQUIRED)}", entry.get("kind"))
        for field in {*_REQUIRED[entry["kind"]], *(f for f in (*_TEXT_FIELDS, *_SHA_FIELDS) if f in entry)}:
            value = entry.get(field)
            if field in _SHA_FIELDS and not (isinstance(value, str) and _SHA256.match(value)):
                raise _lock_error(path, f"{where}.{field}", "a sha256 (64 hex digits)", value)
            if field in _TEXT_FIELDS and not isinstance(value, str):
                raise _lock_error(path, f"{where}.{field}", "text", value)
    return doc["files"]


class Lock:
    """``popos.lock.json``: per source file, its sha256 (or its folder's manifest), origin and date."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, dict] = _read_lock(path) if path.is_file() else {}

    def get(self, name: str) -> dict | None:
        return self.files.get(name)

    def put(self, name: str, entry: dict) -> None:
        self.files[name] = entry
        write_text_atomic(json.dumps({"files": self.files}, indent=2, sort_keys=True) + "\n", self.path)


def write_manifest(root: Path, files: list[str], dest: Path, *, progress: bool = True) -> str:
    """Record size and sha256 of ``files`` (paths relative to ``root``) in the JSON ``dest``; its sha256."""
    listed = {}
    for rel in tqdm(sorted(files), desc=f"sha256 of {dest.name}", unit=" files", disable=not progress):
        path = root / rel
        listed[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path, progress=False)}
    write_text_atomic(json.dumps({"files": listed}, indent=1, sort_keys=True) + "\n", dest)
    return sha256_file(dest, progress=False)


def check_manifest(root: Path, manifest: Path, sha256: str, lock: Lock, *, progress: bool = True) -> list[str]:
    """Files listed in ``manifest`` (relative to ``root``) that are missing or whose size or sha256 changed.

    The manifest itself must have the sha256 recorded in the lock file (:class:`LockFileError` otherwise).
    """
    if not manifest.is_file() or sha256_file(manifest, progress=False) != sha256:
        raise LockFileError(
            f"{manifest}: missing or changed since {lock.path} recorded its sha256 {sha256[:16]}...; delete the "
            "lock entry to re-record"
        )
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LockFileError(f"{manifest}: unreadable manifest ({exc}); delete the lock entry to re-record") from None
    bad = []
    for rel, want in tqdm(listed.items(), desc=f"verify {manifest.name}", unit=" files", disable=not progress):
        if not (isinstance(want, dict) and isinstance(want.get("size"), int) and isinstance(want.get("sha256"), str)):
            raise LockFileError(f"{manifest}: files[{rel!r}]: expected {{size, sha256}}, got {want!r}")
        path = root / rel
        if not path.is_file() or path.stat().st_size != want["size"] or sha256_file(path, progress=False) != want[
            "sha256"
        ]:
            bad.append(rel)
    return bad


def _manifest_path(source: Source, dataset_dir: Path) -> Path:
    return dataset_dir / DOWNLOADS / f"{source.filename}.manifest.json"


def _check(
    path: Path, source: Source, entry: dict | None, lock: Lock, *, shown: str, progress: bool
) -> tuple[str, str]:
    """(sha256, how it was checked) for the file at ``path``, called ``shown`` in messages; ``ChecksumError``
    on a mismatch."""
    sha = sha256_file(path, progress=progress)
    if source.sha256:
        if sha != source.sha256.lower():
            raise ChecksumError(
                f"{shown}: sha256 {sha} does not match the published {source.sha256.lower()}: "
                "the file is corrupt or not the expected one; nothing was installed"
            )
        return sha, "sha256 verified against the published checksum (registry)"
    if entry is not None and "sha256" in entry:
        if sha != entry["sha256"]:
            raise ChecksumError(
                f"{shown}: sha256 {sha} differs from {entry['sha256']} recorded in {lock.path} on "
                f"{entry.get('recorded_at', '?')}; nothing was installed (if the file legitimately changed, "
                "delete its entry from the lock file)"
            )
        return sha, f"sha256 verified against the checksum recorded on {entry.get('recorded_at', '?')} in {lock.path}"
    return sha, f"no published checksum: sha256 {sha[:16]}... recorded in {lock.path}, checked on every later run"


# ---------------------------------------------------------------- HTTP
def fetch(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest.part``, resuming a partial ``.part`` with an HTTP Range request.

    Returns the ``.part`` path once it holds the whole file (the caller verifies it and renames it).
    Raises ``DownloadError`` if the transfer stops early (the ``.part`` is kept: rerun to resume) and
    ``urllib.error.URLError`` if the host cannot be reached.
    """
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "popos-data-download"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the .part does not fit the file any more: start over
            part.unlink()
            return fetch(url, dest, progress=progress, timeout=timeout)
        raise
    with response:
        total = None
        if start and response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start:
                raise DownloadError(f"{url}: server answered the resume with an unexpected Content-Range")
            total = int(match.group(2)) if match.group(2) != "*" else None
            mode = "ab"
        else:
            start, mode = 0, "wb"
            if response.headers.get("Content-Length"):
                total = int(response.headers["Content-Length"])
        with open(part, mode) as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as exc:
                f.flush()
                raise DownloadError(
                    f"{url}: transfer stopped after {part.stat().st_size} bytes ({exc}); rerun to resume"
                ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: got {size} of {total} bytes; rerun to resume")
    return part


# ---------------------------------------------------------------- safe extraction
def _safe_name(name: str, shown: str) -> PurePosixPath:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise UnsafeArchiveError(f"{shown}: member {name!r} would be written outside the target folder; refused")
    return posix


def _link_stays_inside(member: tarfile.TarInfo, shown: str) -> None:
    target = PurePosixPath(member.linkname)
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
    depth = 0
    for part in ("..",) if target.is_absolute() else (base / target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise UnsafeArchiveError(
                f"{shown}: link {member.name!r} -> {member.linkname!r} points outside the target folder; refused"
            )


def _extract_tar(archive: Path, into: Path, shown: str, progress: bool) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tqdm(tar, desc=f"unpack {Path(shown).name}", unit=" files", disable=not progress):
            _safe_name(member.name, shown)
            if member.issym() or member.islnk():
                _link_stays_inside(member, shown)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{shown}: member {member.name!r} is a device or pipe; refused")
            tar.extract(member, into, **_TAR_FILTER)


def _extract_zip(archive: Path, into: Path, shown: str, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in tqdm(zf.infolist(), desc=f"unpack {Path(shown).name}", unit=" files", disable=not progress):
            name = _safe_name(info.filename, shown)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(f"{shown}: member {info.filename!r} is a symbolic link; refused")
            target = into.joinpath(*name.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


def _merge_move(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst``, merging folders that exist in both."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        target = dst / child.name
        if child.is_dir() and not child.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_move(child, target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(child, target)


def _files_under(folder: Path) -> list[str]:
    """Every file (and link to a file) under ``folder``, as POSIX paths relative to it."""
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def safe_extract(
    archive: str | Path, target: str | Path, *, progress: bool = True, shown: str | None = None
) -> list[str]:
    """Unpack a zip or tar(.gz/.bz2/.xz) ``archive`` into ``target``, refusing unsafe members.

    Everything is unpacked into a temporary folder beside ``target`` first and moved into place only
    when the whole archive unpacked cleanly; on any error the temporary folder is removed and
    ``target`` is untouched. Returns the files it installed (paths relative to ``target``). Raises
    ``UnsafeArchiveError`` for members outside ``target`` and ``ValueError`` for damaged or truncated
    archives; messages call the archive ``shown`` (default: its path).
    """
    archive, target = Path(archive), Path(target)
    shown = shown or str(archive)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".unpack-{archive.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, shown, progress)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, shown, progress)
        else:
            raise DownloadError(f"{shown}: neither a zip nor a tar archive (damaged or truncated?); replace it, rerun")
        files = _files_under(tmp)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{shown}: damaged or truncated archive ({exc}); replace it and rerun") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _merge_move(tmp, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return files


# ---------------------------------------------------------------- one source
def _copy_folder(src: Path, dataset_dir: Path, name: str) -> None:
    tmp = dataset_dir / f".ingest-{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _merge_move(tmp, dataset_dir)
    shutil.rmtree(tmp, ignore_errors=True)


def _installed_path(source: Source, dataset_dir: Path) -> Path:
    return dataset_dir / DOWNLOADS / source.filename if source.extract else dataset_dir / source.filename


@dataclass(frozen=True)
class _Job:
    """One source of a dataset to obtain, verify and install, and where its files go."""

    spec: DatasetSpec
    source: Source
    dataset_dir: Path
    lock: Lock
    from_dir: Path | None
    progress: bool

    @property
    def entry(self) -> dict | None:
        return self.lock.get(self.source.filename)

    @property
    def path(self) -> Path:
        """Where the file itself is kept: ``downloads/<file>`` for an archive, ``<dataset>/<file>`` otherwise."""
        return _installed_path(self.source, self.dataset_dir)

    @property
    def folder(self) -> Path | None:
        return self.dataset_dir / self.source.folder if self.source.folder else None

    @property
    def offered(self) -> Path | None:
        return self.from_dir / self.source.filename if self.from_dir else None

    @property
    def offered_folder(self) -> Path | None:
        return self.from_dir / self.source.folder if self.from_dir and self.source.folder else None

    def say(self, text: str) -> None:
        _say(self.spec, f"{self.source.filename}: {text}")


def _install(job: _Job, file: Path, sha: str, how: str, *, shown: str, origin: str) -> dict | None:
    """Unpack the verified ``file`` unless what it unpacked before is intact; the lock entry to record
    (``None``: already installed, nothing to record)."""
    entry = job.entry
    same = entry is not None and entry.get("sha256") == sha
    extra = {}
    if job.source.extract:
        manifest = _manifest_path(job.source, job.dataset_dir)
        if same and "manifest_sha256" in entry:
            try:
                bad = check_manifest(job.dataset_dir, manifest, entry["manifest_sha256"], job.lock,
                                     progress=job.progress)
            except LockFileError as exc:
                job.say(f"{exc}; unpacking it again to write a new one")
            else:
                if not bad:
                    job.say(f"{how}; its unpacked files match their manifest (size and sha256); already installed")
                    return None
                job.say(f"{len(bad)} unpacked file(s) missing or changed (first: {bad[0]}); unpacking it again")
        elif same:
            job.say("no manifest of its unpacked files was recorded (an older popos); unpacking it again")
        files = safe_extract(file, job.dataset_dir, progress=job.progress, shown=shown)
        extra = {"manifest": manifest.relative_to(job.dataset_dir).as_posix(),
                 "manifest_sha256": write_manifest(job.dataset_dir, files, manifest, progress=job.progress)}
    elif same:
        job.say(f"{how}; already installed")
        return None
    return {"kind": "archive" if job.source.extract else "file", "sha256": sha, "size": file.stat().st_size,
            "origin": origin, "recorded_at": entry["recorded_at"] if same else _now(), **extra}


def _record(job: _Job, entry: dict | None, how: str) -> None:
    if entry is not None:  # written last: the file and what it unpacked are in place
        job.lock.put(job.source.filename, entry)
        job.say(how)
        job.say(f"installed into {job.dataset_dir}")


def _record_folder(job: _Job, origin: str) -> None:
    files = [f"{job.source.folder}/{rel}" for rel in _files_under(job.folder)]
    manifest = _manifest_path(job.source, job.dataset_dir)
    manifest_sha = write_manifest(job.dataset_dir, files, manifest, progress=job.progress)
    job.lock.put(job.source.filename, {"kind": "folder", "folder": job.source.folder,
                                       "manifest": manifest.relative_to(job.dataset_dir).as_posix(),
                                       "manifest_sha256": manifest_sha, "origin": origin, "recorded_at": _now()})
    job.say(f"the unpacked folder {job.source.folder}/ is used instead: no checksum is published for its files, so "
            f"the size and sha256 of its {len(files)} files are recorded in {manifest} and checked on every later run")


def _from_offered_file(job: _Job) -> None:
    """The user's file (``--from``): copied, never linked, verified, unpacked, then renamed into place."""
    shown = str(job.offered)
    with atomic_path(job.path) as tmp:
        copy_file(job.offered, tmp)
        sha, how = _check(tmp, job.source, job.entry, job.lock, shown=shown, progress=job.progress)
        entry = _install(job, tmp, sha, how, shown=shown, origin=str(job.offered.resolve()))
    _record(job, entry, how)


def _from_offered_folder(job: _Job) -> None:
    """The user's unpacked folder (``--from``): copied in, its files recorded in a manifest."""
    _copy_folder(job.offered_folder, job.dataset_dir, job.source.folder)
    _record_folder(job, origin=str(job.offered_folder.resolve()))


def _from_kept_file(job: _Job) -> None:
    """The file is already in place (an earlier run, or put there by hand): verified, its unpacked files too."""
    sha, how = _check(job.path, job.source, job.entry, job.lock, shown=str(job.path), progress=job.progress)
    origin = job.entry.get("origin", str(job.path)) if job.entry else str(job.path)
    _record(job, _install(job, job.path, sha, how, shown=str(job.path), origin=origin), how)


def _verify_unpacked(job: _Job) -> bool:
    """Installed before, the archive is gone (or it was an unpacked folder): its files against their manifest.

    False where nothing could be verified (an entry written by an older popos, without a manifest).
    """
    entry = job.entry
    if "manifest_sha256" not in entry:
        job.say(f"installed on {entry['recorded_at']}; its archive was removed and no manifest of its files was "
                "recorded, so they were NOT verified (put the archive back in downloads/ to verify them)")
        return False
    bad = check_manifest(job.dataset_dir, job.dataset_dir / entry["manifest"], entry["manifest_sha256"], job.lock,
                         progress=job.progress)
    if bad:
        remedy = (f"put {job.path.name} back into {job.path.parent} (or rerun with --from DIR) to restore them"
                  if entry["kind"] == "archive" else f"restore them, or delete the entry {job.source.filename!r} "
                  f"from {job.lock.path} to re-record the folder as it is")
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ChecksumError(
            f"{job.dataset_dir / bad[0]}: missing, or its size or sha256 changed since {entry['recorded_at']}{more}; "
            + remedy
        )
    job.say(f"its unpacked files match the manifest (size and sha256) recorded on {entry['recorded_at']}")
    return True


def _from_unpacked_folder(job: _Job) -> None:
    """The user put the unpacked folder in place by hand: its files recorded in a manifest."""
    _record_folder(job, origin=str(job.folder))


def _ask_user(job: _Job) -> None:
    raise _Unavailable(job.source.note or "needs a registration or a browser")


def _fetch_url(job: _Job) -> None:
    """Downloaded (resuming a ``.part``), verified, unpacked, renamed into place."""
    url = job.source.url
    try:
        part = fetch(url, job.path, progress=job.progress)
    except OSError as exc:  # URLError and HTTPError included: host gone, refused, 404, no network
        raise _Unavailable(f"automatic download failed ({exc}). {job.source.note}".strip()) from None
    job.say(f"downloaded from {url}")
    try:
        sha, how = _check(part, job.source, job.entry, job.lock, shown=url, progress=job.progress)
        entry = _install(job, part, sha, how, shown=url, origin=url)
    except (ChecksumError, DownloadError, UnsafeArchiveError):
        part.unlink(missing_ok=True)  # a corrupt or damaged download is fetched anew, not resumed
        raise
    os.replace(part, job.path)
    _record(job, entry, how)


_WAYS: tuple[tuple[Callable[[_Job], bool], Callable[[_Job], bool | None]], ...] = (
    # (applies, handler): the first that applies installs the source
    (lambda j: j.offered is not None and j.offered.is_file(), _from_offered_file),
    (lambda j: j.offered_folder is not None and j.offered_folder.is_dir(), _from_offered_folder),
    (lambda j: j.path.is_file(), _from_kept_file),
    (lambda j: j.entry is not None and j.entry["kind"] != "file" and (j.folder is None or j.folder.is_dir()),
     _verify_unpacked),
    (lambda j: j.folder is not None and j.folder.is_dir(), _from_unpacked_folder),
    (lambda j: j.source.manual, _ask_user),
    (lambda _: True, _fetch_url),
)


def _install_source(job: _Job) -> bool:
    """Obtain, verify and install one source the first way that applies; ``_Unavailable`` if it needs the user.

    False if it is installed but could not be verified (the message said so).
    """
    handler = next(handler for applies, handler in _WAYS if applies(job))
    return handler(job) is not False


# ---------------------------------------------------------------- the command
def _instructions(spec: DatasetSpec, missing: list[tuple[Source, str]], dataset_dir: Path) -> str:
    lines = [f"{spec.name}: {len(missing)} file(s) must be fetched by hand ({spec.licence})"]
    for source, reason in missing:
        lines.append(f"  {source.filename}")
        lines.append(f"    from:    {source.url}")
        lines.append(f"    why:     {reason}")
        lines.append(f"    put it:  {_installed_path(source, dataset_dir)}")
        if source.folder:
            lines.append(f"    or the unpacked folder: {dataset_dir / source.folder}/")
    lines.append(f"  then rerun `popos data download {spec.name}`, or `popos data download {spec.name} --from DIR`")
    lines.append("  with DIR holding these files (or unpacked folders) under the names above.")
    return "\n".join(lines)


def download(
    dataset: str | DatasetSpec, root: str | Path = "data/raw", from_dir: str | Path | None = None, *,
    progress: bool = True,
) -> Path:
    """Fetch (or ingest from ``from_dir``), verify and unpack every source of ``dataset``.

    Rerunning is cheap and safe: finished files are re-verified against the registry or the lock file
    and not unpacked again; an interrupted download resumes. Returns ``<root>/<name>``. Raises
    ``ManualStepRequired`` after printing instructions when some files need the user,
    ``ChecksumError`` / ``UnsafeArchiveError`` / ``DownloadError`` / ``LockFileError`` otherwise (all
    :class:`popos.errors.UserError`).
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    dataset_dir = Path(root) / spec.name
    if spec.generated:
        _say(spec, f"nothing to download: `popos data synth` renders it ({spec.title})")
        return dataset_dir
    from_dir = Path(from_dir) if from_dir is not None else None
    if from_dir is not None and not from_dir.is_dir():
        raise DownloadError(f"--from {from_dir}: no such folder; expected the folder holding the files you have")
    lock = Lock(dataset_dir / LOCK_NAME)
    missing, unverified = [], []
    for source in spec.sources:
        try:
            if not _install_source(_Job(spec, source, dataset_dir, lock, from_dir, progress)):
                unverified.append(source.filename)
        except _Unavailable as exc:
            missing.append((source, str(exc)))
    if missing:
        print(_instructions(spec, missing, dataset_dir), flush=True)
        names = ", ".join(s.filename for s, _ in missing)
        raise ManualStepRequired(f"{spec.name}: missing {names}; see the instructions above")
    if unverified:
        _say(spec, f"all {len(spec.sources)} source(s) present in {dataset_dir}; NOT verified: {', '.join(unverified)}")
    else:
        _say(spec, f"all {len(spec.sources)} source(s) present and verified in {dataset_dir}")
    return dataset_dir
