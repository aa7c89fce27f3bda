"""Export bundles: a directory (optionally a .tar.gz) a device can run and trust. Torch-free.

    card.json        the preprocessing contract, labels, input spec
    manifest.json    sha256 of every file, source checkpoint sha256, versions, options, target profile,
                     artifacts with their gate results, status
    model.*          the artifacts
    golden/          inputs.npy (preprocessed gate images) + <artifact>.probs.npy (host outputs)

Loading verifies every hash; a tampered, truncated or missing file is a one-line error. Archive
extraction refuses absolute paths, ``..`` and links.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.errors import AlnettError
from alnett_edge.files import load_plain_npy, sha256_file

BUNDLE_FORMAT = "alnett-edge-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
CARD = "card.json"


class BundleError(AlnettError):
    """A bundle that is missing, tampered with, truncated or failed."""


def is_bundle_dir(path: Path) -> bool:
    """Whether ``path`` is a folder holding an alnett-edge bundle manifest (any status)."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def guard_output(path: Path, force: bool, option: str = "--out") -> None:
    """The one rule for replacing output: a folder that is not a bundle is never replaced; a bundle
    only with ``force``. Raises before any work is done."""
    if not path.exists():
        return
    if not path.is_dir() or not is_bundle_dir(path):
        raise BundleError(f"{path} exists and is not an alnett-edge bundle; refusing to replace it "
                          f"(choose another {option})")
    if not force:
        raise BundleError(f"{path} already holds a bundle; pass --force to replace it")


def remove_own_staging(path: Path) -> None:
    """Remove a ``.partial``/``.failed``/``.extracting`` folder that an earlier run of ours left; refuse
    anything else of that name."""
    if not path.exists():
        return
    if path.is_dir() and (is_bundle_dir(path) or (path / "golden").is_dir() or not any(path.iterdir())):
        shutil.rmtree(path)
        return
    raise BundleError(f"{path} exists and was not left by alnett-edge; move it away first")


def _safe_rel(root: Path, rel: str) -> Path:
    """``root / rel`` when ``rel`` is a plain relative path inside the bundle, else a BundleError."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise BundleError(f"bundle manifest names a file outside the bundle: {rel!r}")
    return root / rel


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **manifest, "files": file_hashes(root)}
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    card: ModelCard

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("artifacts", []))

    def artifact_path(self, artifact: dict[str, Any]) -> Path:
        return self.file(artifact["file"])

    def file(self, rel: str) -> Path:
        """A file of the bundle: inside it and listed (hash-checked at load), else a BundleError."""
        if rel not in self.manifest.get("files", {}):
            raise BundleError(f"{self.root}: {rel!r} is not listed with a sha256 in the manifest; refusing to open it")
        return _safe_rel(self.root, rel)

    def array(self, rel: str) -> np.ndarray:
        """A listed ``.npy`` of the bundle (golden inputs and outputs): plain numbers only, never pickles."""
        return load_plain_npy(self.file(rel))


def load_bundle(path: str | Path, allow_failed: bool = False) -> Bundle:
    """Open a bundle directory or .tar.gz (extracted beside it) and verify every file's sha256."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        path = extract_archive(path, path.with_name(path.name.split(".tar")[0].removesuffix(".tgz")))
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path} is not an alnett-edge bundle (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path / MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        kind = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path} is not an alnett-edge bundle (format {kind!r})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path / MANIFEST} lists no files with their sha256")
    opened = [CARD, *(a.get("file", "") for a in manifest.get("artifacts", []) if isinstance(a, dict)),
              (manifest.get("reference") or {}).get("file"), (manifest.get("golden") or {}).get("inputs")]
    unlisted = [rel for rel in opened if rel is not None and rel not in files]
    if unlisted:
        raise BundleError(f"bundle file not listed with a sha256 in the manifest: {unlisted[0]!r} (tampered?)")
    for rel, expected in files.items():
        f = _safe_rel(path, rel)
        if not f.is_file():
            raise BundleError(f"bundle file missing: {rel}")
        if sha256_file(f) != expected:
            raise BundleError(f"bundle file {rel} does not match its sha256 in the manifest (tampered or truncated)")
    if manifest.get("status") != "ok" and not allow_failed:
        raise BundleError(f"{path} failed its accuracy gate at export; it must not be deployed")
    return Bundle(path, manifest, ModelCard.from_json((path / CARD).read_text()))


def make_archive(root: Path) -> Path:
    archive = root.with_name(root.name + ".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=f"{root.name}/{p.relative_to(root).as_posix()}")
    return archive


#: an archive member over this (from its header) is refused before it is read; a bundle's largest
#: file, a TensorRT engine of the largest variant, is tens of MB
MAX_MEMBER_BYTES = 512 << 20
MAX_ARCHIVE_BYTES = 1 << 30  # all members together, uncompressed
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)  # EOFError: a truncated .gz


def _checked_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member's header checked as it is read (a bad one stops the scan before its data)."""
    members, total = [], 0
    for m in tar:
        name = m.name
        if name.startswith("/") or ".." in Path(name).parts:
            raise BundleError(f"{archive}: refusing unsafe path {name!r}")
        if not (m.isfile() or m.isdir()):
            raise BundleError(f"{archive}: refusing link or special file {name!r}")
        total += m.size
        if m.size > MAX_MEMBER_BYTES or total > MAX_ARCHIVE_BYTES:
            raise BundleError(f"{archive}: refusing {name!r}: {m.size / 1e6:.0f} MB ({total / 1e6:.0f} MB in all) is over "
                              f"the {MAX_MEMBER_BYTES >> 20} MiB per file / {MAX_ARCHIVE_BYTES >> 20} MiB per bundle limit")
        members.append(m)
    return members


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive safely: regular files and folders only, all inside ``dest``, each
    under :data:`MAX_MEMBER_BYTES` and all under :data:`MAX_ARCHIVE_BYTES` (checked from the headers)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            return _extract(archive, tar, dest)
    except _TAR_ERRORS as exc:
        raise BundleError(f"{archive} is not a readable .tar.gz ({exc or type(exc).__name__})") from exc


def _extract(archive: Path, tar: tarfile.TarFile, dest: Path) -> Path:
    members = _checked_members(archive, tar)
    tops = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
    if len(tops) != 1:
        raise BundleError(f"{archive}: expected one top-level bundle folder, found {sorted(tops)}")
    listed = _listed(archive, tar, members)
    for m in members:  # the caps hold for every member; only what the manifest lists is extracted at all
        rel = Path(*Path(m.name).parts[1:]).as_posix()
        if m.isfile() and rel != MANIFEST and rel not in listed:
            raise BundleError(f"{archive}: {rel!r} is not listed in the bundle's manifest; refused before extraction "
                              "(tampered?)")
    if dest.exists():
        if _same_bundle(tar, members, dest):
            return dest  # extracted before: load_bundle verifies every hash again
        raise BundleError(f"{dest} exists and is not this archive's bundle; move it away or extract "
                          f"{archive.name} elsewhere")
    staging = dest.with_name(dest.name + ".extracting")
    remove_own_staging(staging)
    try:
        staging.mkdir(parents=True)
        for m in members:
            target = staging / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:
                raise BundleError(f"{archive}: cannot read {m.name!r}")
            with src, open(target, "wb") as out:
                try:
                    shutil.copyfileobj(src, out)
                except gzip.BadGzipFile:
                    raise  # the archive, not the disk
                except OSError as exc:  # the disk: full, read-only, ...
                    raise BundleError(f"cannot extract {archive.name} into {dest.parent}: {exc.strerror or exc}") from exc
        (staging / tops.pop()).rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a half-extracted bundle is never left behind
    return dest


def _listed(archive: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> set[str]:
    """The files the archive's manifest lists (read from the archive, before anything is extracted)."""
    entry = next((m for m in members if m.isfile() and Path(m.name).parts[1:] == (MANIFEST,)), None)
    if entry is None:
        raise BundleError(f"{archive}: no {MANIFEST} in the bundle folder")
    if entry.size > 16 << 20:
        raise BundleError(f"{archive}: its {MANIFEST} is {entry.size >> 20} MiB, not a bundle manifest")
    src = tar.extractfile(entry)
    try:
        files = json.loads(src.read().decode("utf-8")).get("files") if src is not None else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        files = None
    if not isinstance(files, dict):
        raise BundleError(f"{archive}: its {MANIFEST} is not a bundle manifest (no files listed)")
    return {str(k) for k in files}


def _same_bundle(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> bool:
    """Whether ``dest`` holds the bundle this archive carries (the same manifest, byte for byte)."""
    entry = next((m for m in members if m.isfile() and Path(m.name).parts[1:] == (MANIFEST,)), None)
    if entry is None or not (dest / MANIFEST).is_file() or entry.size > 16 << 20:
        return False
    src = tar.extractfile(entry)
    return src is not None and src.read() == (dest / MANIFEST).read_bytes()
