"""Bad images skipped on request (``--skip-bad``): the first few are named as they come, the rest
only counted, and every one is listed in a file at the end, so a large messy folder does not bury
the progress bar under a wall of lines (``prepare-data``, ``upscale``)."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from dtkd_pipeline.atomic import hidden_pid_temporary, write_bytes

__all__ = ["SHOWN_SKIPS", "SKIPPED_LIST", "SkippedImages"]

# The file listing every skipped image (path <TAB> reason, one per line), written where the
# command's outputs go. Not an image suffix, so no image listing (--skip-existing) counts it.
SKIPPED_LIST = "skipped_images.txt"
# Skips named one line each; past these the terminal line only says the rest are counted.
SHOWN_SKIPS = 5


class SkippedImages:
    """The images a run left out, in the order they were met."""

    def __init__(self) -> None:
        self.entries: list[tuple[Path, str]] = []  # (image, why it was skipped)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, path: Path, error: Exception) -> None:
        """Record ``path`` as skipped for ``error``; name it on the terminal while few are."""
        self.entries.append((path, _reason(path, error)))
        if len(self.entries) <= SHOWN_SKIPS:
            tqdm.write(f"skipping: {error}")
        elif len(self.entries) == SHOWN_SKIPS + 1:
            tqdm.write(
                f"skipping more bad images: only counted from here on; the full list is "
                f"written at the end ({SKIPPED_LIST})"
            )

    def write_list(self, path: Path) -> Path:
        """Write every skipped image with its reason to ``path``, whole or not at all (a killed
        writer's hidden temporary is removed by the next run writing in that folder)."""
        text = "".join(f"{image}\t{reason}\n" for image, reason in self.entries)
        return write_bytes(path, text.encode("utf-8"), temporary=hidden_pid_temporary(path))

    def summary(self, listed_in: Path | None) -> str:
        """``skipped N bad image(s); full list in FILE`` (``listed_in`` None: all named above)."""
        where = f"full list in {listed_in}" if listed_in is not None else "named above"
        return f"skipped {len(self.entries)} bad image(s); {where}"


def _reason(path: Path, error: Exception) -> str:
    """The error's message on one line, without the leading ``<path>: `` most messages carry."""
    return " ".join(str(error).split()).removeprefix(f"{path}: ")
