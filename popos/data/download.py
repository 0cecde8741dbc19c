"""Fetch, verify and safely unpack the raw files of a dataset (``popos data download NAME``).

Layout under the raw root: ``<root>/<name>/`` holds the unpacked data, ``<root>/<name>/downloads/`` the
archives (kept so that they can be verified again), ``<root>/<name>/popos.lock.json`` the checksums.

* **Resumable**: a download goes to ``<file>.part`` and continues with an HTTP ``Range`` request when
  rerun; it is renamed to its final name only once complete and verified.
* **Verified**: against the sha256 published in the registry where there is one; otherwise the sha256
  of the first download (or ingest) is recorded in the lock file and every later run checks the file
  against it. The output says which. A user-supplied folder is fingerprinted by its file names and sizes.
* **Safe**: zip and tar members that would land outside the dataset folder (absolute paths, ``..``,
  links pointing out, device files) are refused; archives are unpacked into a temporary folder and moved
  into place only when complete, and the lock entry that marks a file installed is written last.
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
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from popos.data.registry import DatasetSpec, Source, get_dataset

LOCK_NAME = "popos.lock.json"
DOWNLOADS = "downloads"
CHUNK = 1 << 20
# Python's own "data" filter (3.10.12+, 3.11.4+) as a second line behind the checks below.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class DownloadError(ValueError):
    """A download failed or stopped early; the message says whether rerunning resumes it."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the published or recorded one; nothing was installed."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder; nothing was installed."""


class ManualStepRequired(ValueError):
    """Some files must be fetched by hand; the instructions were printed."""


class _Unavailable(Exception):
    """A source could not be obtained automatically (manual by nature, or its host failed)."""


def _say(spec: DatasetSpec, text: str) -> None:
    print(f"{spec.name}: {text}", flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- checksums and the lock file
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


def folder_fingerprint(folder: Path) -> str:
    """sha256 of the sorted ``relative/path size`` lines of every file under ``folder`` (no content read)."""
    lines = sorted(f"{p.relative_to(folder).as_posix()} {p.stat().st_size}" for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class Lock:
    """``popos.lock.json``: per source file, its sha256 (or folder fingerprint), origin and date."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, dict] = {}
        if path.is_file():
            try:
                self.files = json.loads(path.read_text())["files"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: unreadable lock file ({exc}); fix or delete it to re-record") from None

    def get(self, name: str) -> dict | None:
        return self.files.get(name)

    def put(self, name: str, entry: dict) -> None:
        self.files[name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"files": self.files}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def _check(path: Path, source: Source, entry: dict | None, lock: Lock, *, progress: bool) -> tuple[str, str]:
    """(sha256, how it was checked) for a file; ``ChecksumError`` on a mismatch."""
    sha = sha256_file(path, progress=progress)
    if source.sha256:
        if sha != source.sha256.lower():
            raise ChecksumError(
                f"{path}: sha256 {sha} does not match the published {source.sha256.lower()}: "
                "the file is corrupt or not the expected one; nothing was installed"
            )
        return sha, "sha256 verified against the published checksum (registry)"
    if entry is not None and "sha256" in entry:
        if sha != entry["sha256"]:
            raise ChecksumError(
                f"{path}: sha256 {sha} differs from {entry['sha256']} recorded in {lock.path} on "
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
def _safe_name(name: str, archive: Path) -> PurePosixPath:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refused")
    return posix


def _link_stays_inside(member: tarfile.TarInfo, archive: Path) -> None:
    target = PurePosixPath(member.linkname)
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
    depth = 0
    for part in ("..",) if target.is_absolute() else (base / target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise UnsafeArchiveError(
                f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the target folder; refused"
            )


def _extract_tar(archive: Path, into: Path, progress: bool) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tqdm(tar, desc=f"unpack {archive.name}", unit=" files", disable=not progress):
            _safe_name(member.name, archive)
            if member.issym() or member.islnk():
                _link_stays_inside(member, archive)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or pipe; refused")
            tar.extract(member, into, **_TAR_FILTER)


def _extract_zip(archive: Path, into: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in tqdm(zf.infolist(), desc=f"unpack {archive.name}", unit=" files", disable=not progress):
            name = _safe_name(info.filename, archive)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refused")
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


def safe_extract(archive: str | Path, target: str | Path, *, progress: bool = True) -> None:
    """Unpack a zip or tar(.gz/.bz2/.xz) ``archive`` into ``target``, refusing unsafe members.

    Everything is unpacked into a temporary folder beside ``target`` first and moved into place only
    when the whole archive unpacked cleanly; on any error the temporary folder is removed and
    ``target`` is untouched. Raises ``UnsafeArchiveError`` for members outside ``target`` and
    ``ValueError`` for damaged or truncated archives.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".unpack-{archive.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, progress)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, progress)
        else:
            raise ValueError(f"{archive}: neither a zip nor a tar archive (damaged or truncated?)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{archive}: damaged or truncated archive ({exc}); delete it and rerun") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _merge_move(tmp, target)
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- one source
def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


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


def _install_source(
    spec: DatasetSpec, source: Source, dataset_dir: Path, lock: Lock, from_dir: Path | None, progress: bool
) -> None:
    """Obtain, verify and install one source; ``_Unavailable`` if it needs the user."""
    entry = lock.get(source.filename)
    path = _installed_path(source, dataset_dir)
    folder = dataset_dir / source.folder if source.folder else None
    offered = from_dir / source.filename if from_dir else None
    offered_folder = from_dir / source.folder if from_dir and source.folder else None

    staged = None  # a new file under a temporary name: renamed into place once installed, removed on failure
    if offered is not None and offered.is_file():
        sha, how = _check(offered, source, entry, lock, progress=progress)
        staged = path.with_name(path.name + ".partial")
        _link_or_copy(offered, staged)
        origin = str(offered.resolve())
    elif offered_folder is not None and offered_folder.is_dir():
        _copy_folder(offered_folder, dataset_dir, source.folder)
        _record_folder(spec, source, folder, lock, origin=str(offered_folder.resolve()))
        return
    elif path.is_file():
        sha, how = _check(path, source, entry, lock, progress=progress)
        origin = entry.get("origin", str(path)) if entry else str(path)
    elif entry is not None and entry["kind"] == "folder" and folder is not None and folder.is_dir():
        _verify_folder(spec, source, folder, entry, lock)
        return
    elif entry is not None and (folder is None or folder.is_dir()):
        _say(spec, f"{source.filename}: installed on {entry['recorded_at']}; archive removed, so not re-verified")
        return
    elif folder is not None and folder.is_dir():
        _record_folder(spec, source, folder, lock, origin=str(folder))
        return
    elif source.manual:
        raise _Unavailable(source.note or "needs a registration or a browser")
    else:
        try:
            staged = fetch(source.url, path, progress=progress)
        except OSError as exc:  # URLError and HTTPError included: host gone, refused, 404, no network
            raise _Unavailable(f"automatic download failed ({exc}). {source.note}".strip()) from None
        _say(spec, f"{source.filename}: downloaded from {source.url}")
        origin = source.url
        try:
            sha, how = _check(staged, source, entry, lock, progress=progress)
        except ChecksumError:
            staged.unlink()
            raise

    already = entry is not None and entry.get("sha256") == sha and (folder is None or folder.is_dir())
    if source.extract and not already:
        try:
            safe_extract(staged or path, dataset_dir, progress=progress)
        except BaseException:
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise
    if staged is not None:
        os.replace(staged, path)
    if already:
        _say(spec, f"{source.filename}: {how}; already installed")
        return
    lock.put(source.filename, {
        "kind": "archive" if source.extract else "file",
        "sha256": sha,
        "size": path.stat().st_size,
        "origin": origin,
        "recorded_at": entry["recorded_at"] if entry and entry.get("sha256") == sha else _now(),
    })
    _say(spec, f"{source.filename}: {how}")
    _say(spec, f"{source.filename}: installed into {dataset_dir}")


def _record_folder(spec: DatasetSpec, source: Source, folder: Path, lock: Lock, origin: str) -> None:
    fingerprint = folder_fingerprint(folder)
    lock.put(source.filename, {"kind": "folder", "folder": source.folder, "fingerprint": fingerprint,
                               "origin": origin, "recorded_at": _now()})
    _say(spec, f"{source.folder}/: unpacked folder used instead of {source.filename}; no checksum possible, "
               f"file names and sizes fingerprinted in {lock.path} and checked on every later run")


def _verify_folder(spec: DatasetSpec, source: Source, folder: Path, entry: dict, lock: Lock) -> None:
    if folder_fingerprint(folder) != entry["fingerprint"]:
        raise ChecksumError(
            f"{folder}: files or sizes changed since they were fingerprinted on {entry['recorded_at']} "
            f"(lock file {lock.path}); restore them, or delete the entry {source.filename!r} to re-record"
        )
    _say(spec, f"{source.folder}/: file names and sizes match the fingerprint recorded on {entry['recorded_at']}")


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
    ``ChecksumError`` / ``UnsafeArchiveError`` / ``DownloadError`` otherwise.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    dataset_dir = Path(root) / spec.name
    if spec.generated:
        _say(spec, f"nothing to download: `popos data synth` renders it ({spec.title})")
        return dataset_dir
    from_dir = Path(from_dir) if from_dir is not None else None
    if from_dir is not None and not from_dir.is_dir():
        raise FileNotFoundError(f"--from {from_dir}: no such folder")
    lock = Lock(dataset_dir / LOCK_NAME)
    missing = []
    for source in spec.sources:
        try:
            _install_source(spec, source, dataset_dir, lock, from_dir, progress)
        except _Unavailable as exc:
            missing.append((source, str(exc)))
    if missing:
        print(_instructions(spec, missing, dataset_dir), flush=True)
        names = ", ".join(s.filename for s, _ in missing)
        raise ManualStepRequired(f"{spec.name}: missing {names}; see the instructions above")
    _say(spec, f"all {len(spec.sources)} source(s) present and verified in {dataset_dir}")
    return dataset_dir
