"""Named checkpoints: where the official weight files come from, where they live, and their hashes.

A registry of :class:`WeightSpec` entries (in the spirit of torchvision's weights API) maps short
names such as ``resshift-realsr-v1`` or ``swinir-s-x4`` to the official release files.

Integrity. Neither upstream publishes checksums, so ``sha256=None`` means *trust on first use*: the
hash of the first download (or of a file first found in the weights folder) is recorded in
``<file>.sha256`` beside it and verified on every later use. A spec with a known ``sha256`` is
verified on download and on every use.

Where files live (first match wins):

1. an explicit ``weights_dir`` argument (CLI ``--weights-dir``, params ``teacher.weights_dir``);
2. ``$DTKD_HOME/weights`` when the ``DTKD_HOME`` environment variable is set;
3. the user's cache folder: ``%LOCALAPPDATA%\\dtkd-pipeline\\cache\\weights`` on Windows,
   ``~/Library/Caches/dtkd-pipeline/weights`` on macOS, ``$XDG_CACHE_HOME/dtkd-pipeline/weights``
   (default ``~/.cache/dtkd-pipeline/weights``) elsewhere.

Mirrors. When ``DTKD_MIRROR`` is set to a base URL, every file is fetched from
``$DTKD_MIRROR/<filename>`` instead of its release URL (``file://`` URLs work too). This serves
air-gapped mirrors and the tests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import BinaryIO, Protocol

from tqdm import tqdm

from dtkd_pipeline import atomic
from dtkd_pipeline.progress import hidden_unless
from dtkd_pipeline.run_lock import PidLock

__all__ = [
    "MIRROR_ENV",
    "REGISTRY",
    "WeightSpec",
    "WeightsError",
    "download",
    "file_sha256",
    "get_spec",
    "list_weights",
    "resolve_weights",
    "spec_url",
    "verify_file",
    "weights_dir",
]

MIRROR_ENV = "DTKD_MIRROR"
HOME_ENV = "DTKD_HOME"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified; the message says what to do."""


@dataclass(frozen=True)
class WeightSpec:
    """One official checkpoint file; ``sha256``/``size_bytes`` are None where none is published."""

    name: str
    url: str
    filename: str
    sha256: str | None
    size_bytes: int | None
    license: str
    description: str


_RESSHIFT_RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"
_SWINIR_RELEASE = "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
_RESSHIFT_LICENSE = "NTU S-Lab License 1.0 (non-commercial; see github.com/zsyOAOA/ResShift)"
_SWINIR_LICENSE = "Apache-2.0 (see github.com/JingyunLiang/SwinIR)"


def _resshift(name: str, filename: str, description: str) -> WeightSpec:
    return WeightSpec(
        name=name,
        url=_RESSHIFT_RELEASE + filename,
        filename=filename,
        sha256=None,
        size_bytes=None,
        license=_RESSHIFT_LICENSE,
        description=description,
    )


def _swinir_s(scale: int) -> WeightSpec:
    filename = f"002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{scale}.pth"
    return WeightSpec(
        name=f"swinir-s-x{scale}",
        url=_SWINIR_RELEASE + filename,
        filename=filename,
        sha256=None,
        size_bytes=None,
        license=_SWINIR_LICENSE,
        description=f"SwinIR lightweight x{scale} (DIV2K, {{'params': state_dict}}, ~3.6 MB)",
    )


REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        _resshift(
            "resshift-realsr-v1",
            "resshift_realsrx4_s15_v1.pth",
            "ResShift real-world x4 UNet, 15 steps, v1 (~478 MB fp32 state dict)",
        ),
        _resshift(
            "resshift-realsr-v2",
            "resshift_realsrx4_s15_v2.pth",
            "ResShift real-world x4 UNet, 15 steps, v2 (~478 MB fp32 state dict)",
        ),
        _resshift(
            "resshift-realsr-v3",
            "resshift_realsrx4_s4_v3.pth",
            "ResShift real-world x4 UNet, 4 steps, v3 (~478 MB fp32 state dict)",
        ),
        _resshift(
            "resshift-vq-f4",
            "autoencoder_vq_f4.pth",
            "ResShift VQGAN f4 autoencoder (~221 MB fp32 state dict)",
        ),
        _swinir_s(2),
        _swinir_s(3),
        _swinir_s(4),
    )
}


def list_weights() -> list[WeightSpec]:
    """All registered checkpoints, in registry order."""
    return list(REGISTRY.values())


def get_spec(name: str) -> WeightSpec:
    """The spec registered under ``name`` (or whose filename is ``name``)."""
    if name in REGISTRY:
        return REGISTRY[name]
    for spec in REGISTRY.values():
        if spec.filename == name:
            return spec
    known = ", ".join(REGISTRY)
    raise WeightsError(f"unknown weights name {name!r}; known names: {known}")


def weights_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding checkpoint files (see the module docstring for the lookup order)."""
    if override is not None:
        return Path(override).expanduser()
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "weights"
    return _user_cache_dir() / "dtkd-pipeline" / "weights"


def _user_cache_dir() -> Path:
    # The platformdirs conventions, without the dependency.
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return Path(base) if base else Path.home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # XDG says relative values are invalid and must be ignored.
    return Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"


def spec_url(spec: WeightSpec) -> str:
    """The URL a spec is fetched from: its release URL, or ``$DTKD_MIRROR/<filename>``."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        if not mirror.startswith(("http://", "https://", "file://")):
            raise WeightsError(
                f"{MIRROR_ENV}={mirror!r} is not a URL: set it to a base URL such as "
                f"https://host/path (serving {spec.filename}), or unset it"
            )
        return mirror.rstrip("/") + "/" + spec.filename
    return spec.url


NOT_TORCH_FILE = "not a torch.save file: neither a zip archive nor a pickle"


def looks_like_torch_file(path: str | os.PathLike[str]) -> bool:
    """A torch.save file: a zip archive (torch >= 1.6) or a pickle (protocol 2+, legacy format).

    Tells a checkpoint holding non-tensor objects (refused for safety) from a file that is not a
    checkpoint at all (an HTML error page, random bytes), which torch reports the same way.
    """
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        _hash_file(handle, digest)
    return digest.hexdigest()


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _hash_file(handle: BinaryIO, digest: _Digest) -> None:
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> str | None:
    record = _record_path(path)
    if not record.is_file():
        return None
    fields = record.read_text(encoding="utf-8").split()
    return fields[0].lower() if fields else None


def _write_record(path: Path, sha256: str) -> None:
    """Record the hash beside the file; a read-only folder (a shared mount) goes without one."""
    # sha256sum format, so `sha256sum -c <file>.sha256` works from the weights folder.
    record = _record_path(path)
    try:
        with atomic.replacing(record) as tmp:
            tmp.write_text(f"{sha256}  {path.name}\n", encoding="utf-8")
    except OSError as err:
        warnings.warn(
            f"{record}: cannot record the checksum ({err.strerror}); {path.name} is used "
            "unrecorded, so a later change to it will not be noticed",
            stacklevel=2,
        )


def _how_to_fix(spec: WeightSpec, final: Path) -> str:
    return (
        f"Download it by hand to {final}, or point --weights-dir DIR (for the pipeline "
        f"stages: teacher.weights_dir in params.yaml) at a folder containing {spec.filename}, "
        f"or set {HOME_ENV} (files then live in ${HOME_ENV}/weights), "
        f"or set {MIRROR_ENV} to a base URL that serves {spec.filename}."
    )


def offering_local_copy(error: WeightsError, option: str) -> WeightsError:
    """``error`` about a registered release that could not be had, plus the way round it: the
    command ``option`` also takes a checkpoint file the user already has."""
    return WeightsError(f"{error} Or pass a local copy with {option} FILE.")


def verify_file(path: Path, spec: WeightSpec) -> str:
    """Check ``path`` against the spec's hash, else its recorded hash (recorded here if absent).

    A mismatch raises :class:`WeightsError` and leaves the file in place: it may be a file the user
    copied by hand, so deleting it is the user's decision. Returns the file's sha256.
    """
    actual = file_sha256(path)
    expected = spec.sha256.lower() if spec.sha256 else _read_record(path)
    source = "the registry" if spec.sha256 else f"the record {_record_path(path)}"
    if expected is None:
        if not looks_like_torch_file(path):  # a cut-short copy must not become the trusted hash
            raise WeightsError(
                f"{path} ({spec.name}) is not a complete checkpoint (a torch file is a zip "
                f"archive or a pickle): delete it and run again to re-download it"
            )
        _write_record(path, actual)  # trust on first use
        return actual
    if actual != expected:
        raise WeightsError(
            f"checksum mismatch for {path} ({spec.name}): expected sha256 {expected} "
            f"(from {source}), got {actual}. The file is corrupt or was replaced. Delete it "
            f"(and {_record_path(path).name}) and run again to re-download it."
        )
    if spec.sha256 and _read_record(path) != actual:
        _write_record(path, actual)
    return actual


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Turn a registered name or a file path into the path of a verified checkpoint file.

    - A registered name (or a registered filename) is looked up in the weights folder, verified,
      and downloaded first when missing and ``download`` is true.
    - Any other existing file path is returned as is (no hash check: it is not a registry file).
    """
    return _resolve(name_or_path, weights_dir, download, progress)[0]


def resolve_hashed_weights(
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[Path, str]:
    """`resolve_weights` plus the file's sha256, each file read once (a registry file's
    verification already hashed it)."""
    path, sha256 = _resolve(name_or_path, weights_dir, download, progress)
    return path, sha256 or file_sha256(path)


def _resolve(
    name_or_path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None,
    download: bool,
    progress: bool,
) -> tuple[Path, str | None]:
    """(path, sha256 when verification computed it, else None)."""
    folder = _weights_dir(weights_dir)
    text = os.fspath(name_or_path)
    spec = REGISTRY.get(text)
    if spec is None:
        candidate = Path(text).expanduser()
        if candidate.is_file():
            return candidate, None
        if candidate.exists():
            raise WeightsError(f"weights path {candidate} exists but is not a file")
        try:
            spec = get_spec(text)
        except WeightsError:
            if _looks_like_path(text):
                raise WeightsError(
                    f"weights file {candidate} does not exist (and {text!r} is not a registered "
                    f"name; known names: {', '.join(REGISTRY)})"
                ) from None
            raise
    final = folder / spec.filename
    if final.is_file():
        return final, verify_file(final, spec)
    if not download:
        raise WeightsError(
            f"weights {spec.name!r} not found at {final} and downloading is off. "
            + _how_to_fix(spec, final)
        )
    downloaded = _download(spec, folder, progress=progress)
    return downloaded, _read_record(downloaded)  # hashed while streaming, then recorded


_TORCH_SUFFIXES = {".pth", ".pt", ".ckpt"}


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or Path(text).suffix in _TORCH_SUFFIXES | {".bin"}


def download(spec: WeightSpec, dest_dir: str | os.PathLike[str], progress: bool = True) -> Path:
    """Download ``spec`` into ``dest_dir`` and return the verified final path.

    Streams to ``<file>.part`` and resumes it with an HTTP Range request when present (a server that
    ignores Range gets a fresh start). The sha256 is computed while streaming; the ``.part`` becomes
    the final file (atomic ``os.replace``) only after the hash check passes, then ``<file>.sha256``
    is written. Concurrent callers on one machine serialise on ``<file>.lock`` where ``fcntl``
    exists, so only one of them downloads; the lock file is removed when done. Folders made for
    a download that fails are removed again unless they keep a resumable ``.part``.
    """
    folder = Path(dest_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise WeightsError(
            f"the weights folder {folder} is a file; point --weights-dir (teacher.weights_dir) "
            f"or {HOME_ENV} at a folder"
        )
    made = atomic.make_folders(folder)
    try:
        return _download_into(folder, spec, progress)
    except BaseException:
        atomic.remove_empty_folders(made)  # a mistyped --weights-dir leaves no empty folder behind
        raise


def _download_into(folder: Path, spec: WeightSpec, progress: bool) -> Path:
    """`download` in an existing ``folder``: lock, fetch, verify, then move into place."""
    final = folder / spec.filename
    with _file_lock(folder / (spec.filename + ".lock")):
        if final.is_file():  # another process finished while we waited for the lock
            verify_file(final, spec)
            return final
        part = folder / (spec.filename + ".part")
        url = spec_url(spec)
        actual = _fetch(url, part, spec, final, progress)
        size = part.stat().st_size
        problem = None
        if spec.sha256 and actual != spec.sha256.lower():
            problem = f"expected sha256 {spec.sha256.lower()}, got {actual}"
        elif spec.size_bytes is not None and size != spec.size_bytes:
            problem = f"expected {spec.size_bytes} bytes, got {size}"
        elif Path(spec.filename).suffix in _TORCH_SUFFIXES and not looks_like_torch_file(part):
            # With no published hash this is the only check before the hash is trusted for good.
            problem = f"the {size} bytes received are not a torch checkpoint (an error page?)"
        if problem:
            part.unlink(missing_ok=True)
            raise WeightsError(
                f"downloaded file for {spec.name} from {url} failed verification ({problem}); "
                f"the bad download was removed and nothing was written to {final}. Run again to "
                "re-download; if it keeps failing, the server (or DTKD_MIRROR) serves a different "
                "file. " + _how_to_fix(spec, final)
            )
        os.replace(part, final)
        _write_record(final, actual)
        return final


def _fetch(url: str, part: Path, spec: WeightSpec, final: Path, progress: bool) -> str:
    """Stream ``url`` into ``part`` (resuming when possible); return the whole file's sha256."""
    for _attempt in range(3):  # later attempts only follow a resume the server refused
        offset = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "dtkd-pipeline"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                # file:// answers have no status; treat them like a plain 200.
                status = getattr(response, "status", None) or 200
                if offset and status == 200:
                    offset = 0  # the server ignored Range and sends the whole file: start over
                elif offset and not _range_starts_at(response.headers.get("Content-Range"), offset):
                    part.unlink()  # a partial answer for some other range: distrust it
                    continue
                return _stream(response, part, offset, spec, progress)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                part.unlink()  # .part is as long as the file, or longer: it cannot be resumed
                continue
            reason = f"HTTP {err.code} {err.reason}"
        except urllib.error.URLError as err:
            reason = str(err.reason)
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, early closes
            reason = f"{type(err).__name__}: {err}"
        resumable = part.is_file() and part.stat().st_size > 0
        raise WeightsError(
            f"could not download {spec.name} from {url} ({reason}). The file is expected at "
            f"{final}. "
            + _how_to_fix(spec, final)
            + (
                f" The partial download {part} is kept; running again resumes it."
                if resumable
                else ""
            )
        )
    raise WeightsError(
        f"could not resume {part} from {url}: the server kept refusing the range. Delete the "
        f".part file and run again. " + _how_to_fix(spec, final)
    )


def _range_starts_at(content_range: str | None, offset: int) -> bool:
    # Content-Range: bytes <start>-<end>/<total>
    if not content_range or not content_range.startswith("bytes "):
        return False
    start = content_range[6:].split("-", 1)[0].strip()
    return start.isdigit() and int(start) == offset


class _Response(Protocol):
    headers: Message

    def read(self, size: int = -1, /) -> bytes: ...


def _stream(response: _Response, part: Path, offset: int, spec: WeightSpec, progress: bool) -> str:
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as handle:  # the hash covers the bytes already on disk
            _hash_file(handle, digest)
    length = response.headers.get("Content-Length")
    remaining = int(length) if length and length.isdigit() else None
    total = offset + remaining if remaining is not None else spec.size_bytes
    received = 0
    with (
        open(part, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=spec.filename,
            leave=False,
            **hidden_unless(progress),
        ) as bar,
    ):
        while chunk := response.read(_CHUNK):
            with _writing(part):
                out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        with _writing(part):
            out.flush()  # here, not on close: a full disk must fail as a write, not a download
    if remaining is not None and received != remaining:
        # Keep the .part: the next run resumes from what arrived.
        raise ConnectionError(
            f"connection closed after {offset + received} of {offset + remaining} bytes"
        )
    return digest.hexdigest()


@contextlib.contextmanager
def _writing(part: Path) -> Iterator[None]:
    """A failed write to ``part`` (a full disk) as a WeightsError that says so; left an OSError,
    it would be reported as a failed download and blame the server."""
    try:
        yield
    except OSError as error:
        room = "free space there, or " if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise WeightsError(
            f"could not write {part}: {error.strerror or error}; {room}point --weights-dir (for "
            f"the pipeline stages: teacher.weights_dir) or {HOME_ENV} at a folder on another "
            "disk. The bytes downloaded so far are kept; running again resumes from them."
        ) from error


def _file_lock(path: Path) -> PidLock:
    """An exclusive lock on ``path`` that waits for the holder, and is removed by the one who
    is done with it (so no lock file stays beside the weights)."""
    return PidLock(path, remove_when_released=True, wait=True)


# resolve_weights's parameters shadow these two public names; it calls them through the aliases.
_weights_dir = weights_dir
_download = download
