"""Writes that are complete or absent: a crash never leaves half a file or half a result folder."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(
    target: Path, *, durable: bool = False, temporary: Path | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; on success it replaces ``target``.

    On any error the temporary is removed and ``target`` keeps its old content. An OSError about
    the temporary (or the rename) is raised again naming ``target``: the temporary is gone by
    then, and the user knows ``target``. ``durable`` fsyncs the file before the rename and the
    folder after it, so after a power loss ``target`` holds the old or the new content, never
    a name without its data. ``temporary`` replaces the default hidden, per-call name, for
    callers whose killed writers' leftovers are found by name (see :func:`pid_temporary`).
    The folder must exist.
    """
    tmp = temporary or target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
    except BaseException as error:
        _discard(tmp)
        if isinstance(error, OSError) and (
            os.fspath(tmp) in (error.filename, error.filename2) or _unnamed(error)
        ):
            raise _naming(target, error) from error
        raise
    try:
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, target)
        if durable:
            _fsync(target.parent, _FOLDER_FLAGS)
    except BaseException as error:
        _discard(tmp)
        if isinstance(error, OSError):
            raise _naming(target, error) from error
        raise


def pid_temporary(path: Path) -> Path:
    """``<name>.tmp-<pid>``: a temporary that :func:`remove_dead_siblings` removes once the
    process writing it has died."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def hidden_pid_temporary(target: Path) -> Path:
    """``.<name>.<hex>.tmp-<pid>``: a hidden temporary for ``target`` that
    :func:`remove_dead_hidden_temporaries` removes once the process writing it has died (a
    SIGKILL or power loss leaves it behind). The hex keeps two writes of one name apart."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp-{os.getpid()}")


def pid_trash(path: Path) -> Path:
    """``<name>.trash-<pid>``: where ``path`` is moved to be deleted; :func:`remove_dead_siblings`
    removes it once the process deleting it has died."""
    return path.with_name(f"{path.name}.trash-{os.getpid()}")


def delete_trash(trash: Path) -> None:
    """Delete ``trash``, a replaced copy moved aside (see :func:`pid_trash`) once its replacement
    is in place. A failure only warns: the replacement succeeded, and the leftover is named so the
    user can delete it by hand."""
    _delete_or_warn(trash, "the replaced copy", "its replacement is in place", stacklevel=3)


def _delete_or_warn(path: Path, what: str, why_safe: str, *, stacklevel: int) -> None:
    """Delete ``path`` (a folder tree, or a file or link); where that fails and it is still
    there, warn naming it and saying why deleting it by hand is safe. ``stacklevel`` is passed
    to ``warnings.warn`` from here: 3 points at the caller of this function's caller."""
    is_tree = path.is_dir() and not path.is_symlink()
    try:
        if is_tree:
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        if is_tree:  # rmtree stops at its first failure: free the rest
            shutil.rmtree(path, ignore_errors=True)
        if not (path.exists() or path.is_symlink()):  # another process deleted it meanwhile
            return
        warnings.warn(
            f"{path}: {what} could not be deleted ({error.strerror or error}); "
            f"{why_safe}, so delete {path} by hand",
            stacklevel=stacklevel,
        )


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def _naming(target: Path, error: OSError) -> OSError:
    """The same failure (errno, reason) reported for ``target``."""
    return OSError(error.errno, error.strerror or str(error), os.fspath(target))


def _unnamed(error: OSError) -> bool:
    """A system error without a file name: a failed write, flush or close (a full disk, an I/O
    error) names none, so the caller that knows what was being written must."""
    return error.errno is not None and error.filename is None


@contextlib.contextmanager
def naming_write_errors(location: Path) -> Iterator[None]:
    """Report an OSError without a file name raised inside as one about ``location``: the
    file or folder being written, which the user can free space for or move elsewhere."""
    try:
        yield
    except OSError as error:
        if _unnamed(error):
            raise _naming(location, error) from error
        raise


def write_bytes(path: Path, data: bytes, *, temporary: Path | None = None) -> Path:
    """Write to a temporary file in the same folder (``temporary``: see :func:`replacing`), then
    rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, temporary=temporary) as tmp:
        tmp.write_bytes(data)
    return path


def write_together(contents: Mapping[Path, bytes]) -> list[Path]:
    """Write several files that belong together (a table as JSON and as markdown): each goes to
    a hidden temporary beside it, and only once every one is written are they renamed into place.

    A failed write (a full disk) leaves every target as it was and no temporary behind; only a
    kill between the renames could leave a new file beside an old one. A killed run's
    temporaries are removed by the next call for the same folders (see
    :func:`hidden_pid_temporary`). Returns the targets.
    """
    targets = list(contents)
    for folder in dict.fromkeys(target.parent for target in targets):
        remove_dead_hidden_temporaries(folder)
    with contextlib.ExitStack() as renames:  # on success, renamed last-entered first
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = renames.enter_context(replacing(target, temporary=hidden_pid_temporary(target)))
            tmp.write_bytes(contents[target])
    return targets


def flush_to_disk(*paths: Path) -> None:
    """fsync each file, then each distinct parent folder (so the names survive a power loss too).

    For data whose completion is recorded separately: the record must never reach the disk
    before the data it vouches for.
    """
    for path in paths:
        _fsync(path, os.O_RDONLY)
    for folder in dict.fromkeys(path.parent for path in paths):
        _fsync(folder, _FOLDER_FLAGS)


_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def json_text(payload: Any) -> str:
    """``payload`` as the pipeline writes JSON files: indented, ending in a newline."""
    return json.dumps(payload, indent=2) + "\n"


def write_json(path: Path, payload: Any) -> Path:
    return write_text(path, json_text(payload))


# Marks a folder a stage wrote, so a rerun may replace it whole. Listed in .dvcignore.
OUTPUT_MARKER = ".dtkd-output"


class OutputFolderError(Exception):
    """An output location that must not be replaced; the message names the params key."""


def check_replaceable(folder: Path, key: str) -> None:
    """Refuse (before any work) to replace a folder that no stage wrote: it would be deleted whole.

    A missing or empty folder, or one holding :data:`OUTPUT_MARKER`, may be replaced.
    """
    require_replaceable_location(folder, key)
    if is_replaceable(folder):
        return
    raise OutputFolderError(
        f"{key}: {folder} holds files no stage of this pipeline wrote, and the stage replaces "
        f"that folder whole; set {key} to a new or empty folder, or delete {folder} yourself"
    )


def require_replaceable_location(folder: Path, key: str) -> None:
    """Refuse a folder to be replaced whole that this process could not replace: one under a
    file, a file, or an existing folder whose entries it could not delete or whose own folder it
    could not rename a new one into (checked here: the swap comes after the work)."""
    require_folder(folder, key, writable=False)  # an empty read-only folder is still replaced
    if folder.is_dir():
        require_writable_in(folder.parent, key, f"cannot replace {folder}")
        if any(folder.iterdir()):  # its entries are deleted
            require_writable_in(folder, key)


def is_replaceable(folder: Path) -> bool:
    """Missing, empty, or marked as a stage's output (call :func:`require_folder` first)."""
    if not folder.exists() and not folder.is_symlink():
        return True
    return (folder / OUTPUT_MARKER).is_file() or not any(folder.iterdir())


def require_parent_folders(path: Path, key: str) -> None:
    """Refuse a location under a file (``notes.txt/out``), or a missing one whose nearest existing
    folder this process may not write in: creating it would fail after the work, naming a
    temporary or lock file instead of ``key``."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            _refuse_a_file(parent, key)
            if not (path.exists() or path.is_symlink()):
                require_writable_in(parent, key, f"cannot create {path}")
            return


def can_write_in(folder: Path) -> bool:
    """Whether this process may create entries in ``folder`` (permissions, read-only mounts)."""
    return os.access(folder, os.W_OK | os.X_OK)


def require_writable(path: Path, key: str) -> None:
    """Refuse an existing output this process may not write: a folder it cannot create entries
    in, or a file it cannot replace (files are renamed over, so their folder must be writable).
    A missing output is :func:`require_parent_folders`' concern."""
    if path.is_dir():
        require_writable_in(path, key)
    elif path.exists():
        require_writable_in(path.parent, key, f"cannot replace {path}")


def require_writable_in(folder: Path, key: str, action: str | None = None) -> None:
    """Refuse, naming ``key`` (and ``action``, where ``folder`` is not the output itself), when
    this process cannot create entries in ``folder``: the write would fail only after the work,
    naming a temporary or lock file."""
    if not can_write_in(folder):
        doing = f"{action}: " if action else ""
        raise OutputFolderError(
            f"{key}: {doing}{folder} is not writable; choose another {key} or fix the "
            f"permissions of {folder}"
        )


def require_writable_location(path: Path, key: str) -> None:
    """Refuse an output at ``path`` (file or folder) that could not be written: one under a file,
    or in or at a place this process may not write."""
    require_parent_folders(path, key)
    require_writable(path, key)


def require_folder(folder: Path, key: str, *, writable: bool = True) -> None:
    """Refuse an output folder that exists as a file (or a link to one, or a dangling link), or
    lies under a file, or (``writable``) exists but cannot be written in: each way writing in it
    would fail only after the work. ``writable=False`` for a folder that may be only read."""
    _refuse_a_file(folder, key)
    require_parent_folders(folder, key)
    if writable:
        require_writable(folder, key)


def _refuse_a_file(folder: Path, key: str) -> None:
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise OutputFolderError(f"{key}: {folder} is a file, not a folder; choose another {key}")


def require_file_target(path: Path, key: str) -> None:
    """Refuse an output file location that is a folder, lies under a file, or could not be
    written (see :func:`require_writable`), before the work that produces the file (the write
    would fail at the end, naming a temporary)."""
    if path.is_dir():
        raise OutputFolderError(f"{key}: {path} is a folder; give a file name")
    require_writable_location(path, key)


def mark_output(folder: Path) -> None:
    """Mark `folder` as a stage's output (see :func:`check_replaceable`)."""
    marker = folder / OUTPUT_MARKER
    with naming_write_errors(marker):
        marker.write_text("written by a dtkd-pipeline stage; replaced on rerun\n")


@contextlib.contextmanager
def staged_folder(final: Path, key: str) -> Iterator[Path]:
    """Yield an empty ``<final>.partial`` folder; on success it replaces ``final`` whole.

    ``key`` names the params key of ``final`` in errors. A ``final`` no stage wrote is refused up
    front. On an exception the partial folder is removed and ``final`` (the previous result) is
    untouched.
    """
    check_replaceable(final, key)
    with replacing_folder(final, final.with_name(final.name + ".partial")) as staging:
        yield staging


@contextlib.contextmanager
def replacing_folder(final: Path, staging: Path) -> Iterator[Path]:
    """Yield ``staging``, emptied and marked as a stage's output; on success it replaces ``final``
    whole, on any error it is removed and ``final`` is untouched.

    The folder counterpart of :func:`replacing`, without checking what ``final`` holds (see
    :func:`check_replaceable`).
    """
    shutil.rmtree(staging, ignore_errors=True)
    made_parents = make_folders(staging.parent)  # removed again on failure, where still empty
    staging.mkdir()
    try:
        with _naming_staged_errors(staging, final):
            mark_output(staging)
            yield staging
        # Move the old folder aside rather than delete it first: a delete that stops halfway
        # would leave ``final`` non-empty, the swap would fail, and the new result would be lost.
        trash = pid_trash(final)
        moved_aside = _move_aside(final, trash)
        try:
            os.replace(staging, final)
        except BaseException:
            if moved_aside:
                os.rename(trash, final)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(made_parents)
        raise
    if moved_aside:
        delete_trash(trash)


@contextlib.contextmanager
def _naming_staged_errors(staging: Path, final: Path) -> Iterator[None]:
    """Report an OSError about a file in ``staging`` (or about no file) as one about ``final``:
    the staging folder is deleted on the way out, ``final`` is what the user chose."""
    try:
        yield
    except OSError as error:
        named = (error.filename, error.filename2)
        if _unnamed(error) or any(_is_within(name, staging) for name in named):
            raise _naming(final, error) from error
        raise


def _is_within(name: object, folder: Path) -> bool:
    return isinstance(name, str | os.PathLike) and Path(name).is_relative_to(folder)


def _move_aside(folder: Path, trash: Path) -> bool:
    """Rename ``folder`` to ``trash``; False where there was no folder to move."""
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return False
    return True


def make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; return those this call made, deepest first (one
    another process made meanwhile is not ours to remove)."""
    missing: list[Path] = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    made: list[Path] = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        made.append(candidate)
    return made[::-1]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (one chain of parents) while they are empty; one that holds something now
    (another run's lock or output) stays, and so do its parents."""
    for folder in sorted(set(folders), key=lambda path: len(path.parts), reverse=True):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def remove_dead_siblings(path: Path) -> None:
    """Remove `<name>.tmp-<pid>` / `<name>.trash-<pid>` left by creators that have since died."""
    remove_dead_temporaries(path.parent, path.name)


def remove_dead_temporaries(folder: Path, name: str | None = None) -> None:
    """Remove `<name>.tmp-<pid>` / `<name>.trash-<pid>` in `folder` (any name when None) whose
    creating process has died. One that cannot be deleted warns, naming it, and is left."""
    for entry, base, _ in _dead_writers_leftovers(folder):
        if name is None or base == name:
            _remove_dead_leftover(entry)


def remove_dead_hidden_temporaries(folder: Path) -> None:
    """Remove the hidden `.<name>.tmp-<pid>` files in `folder` whose writing process has died
    (see :func:`hidden_pid_temporary`). Only hidden files: in a folder of the user's, a visible
    file or a folder so named may be theirs."""
    for entry, _, kind in _dead_writers_leftovers(folder):
        if kind == "tmp" and entry.name.startswith(".") and not entry.is_dir():
            _remove_dead_leftover(entry)


def _remove_dead_leftover(entry: Path) -> None:
    # stacklevel 4: the warning points at whoever called remove_dead_*.
    _delete_or_warn(entry, "a dead run's leftover", "no running process uses it", stacklevel=4)


def _dead_writers_leftovers(folder: Path) -> Iterator[tuple[Path, str, str]]:
    """(entry, name, kind) for each `<name>.<kind>-<pid>` in `folder`, kind tmp or trash, whose
    process has died (this process's own are never yielded)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        stem, _, pid_text = entry.name.rpartition("-")
        base, dot, kind = stem.rpartition(".")
        if not (dot and kind in ("tmp", "trash") and pid_text.isdigit()):
            continue
        pid = int(pid_text)
        if pid == os.getpid() or _pid_alive(pid):
            continue
        yield entry, base, kind


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
