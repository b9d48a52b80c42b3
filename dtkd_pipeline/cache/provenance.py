"""Provenance comparison and store fingerprints.

Provenance is a JSON dict kept in the store's group attributes. Comparisons run on the JSON form,
so a tuple requested in code equals the list read back from `zarr.json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ProvenanceMismatchError

# Keys that several stages agree on.
SOURCES = "sources"  # prepared store: source image file names (content: the shard checksums)
PREPARED_FINGERPRINT = "prepared_fingerprint"  # teacher store: fingerprint of train.zarr it read


class _Absent:
    """Marks a field missing on one side; prints bare so messages read `stored <absent>`."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


def to_json_value(value: Any) -> Any:
    """Round-trip through JSON so tuples become lists and non-JSON values fail early."""
    return json.loads(json.dumps(value, sort_keys=True))


def diff_fields(stored: Any, requested: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, stored value, requested value) for every leaf that differs.

    Only fields present in `requested` are compared, so a caller checks what it cares about.
    Nested dicts are compared field by field so the message points at the leaf that changed.
    """
    if isinstance(stored, Mapping) and isinstance(requested, Mapping):
        differences: list[tuple[str, Any, Any]] = []
        for key in requested:
            field = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                differences.append((field, ABSENT, requested[key]))
            else:
                differences.extend(diff_fields(stored[key], requested[key], field))
        return differences
    return [] if stored == requested else [(prefix or "<root>", stored, requested)]


def mismatch_error(
    path: Path,
    what: str,
    differences: Sequence[tuple[str, Any, Any]],
    rebuild: str | None = None,
) -> ProvenanceMismatchError:
    """The error naming each differing field; `rebuild` says how to fix it (default: overwrite)."""
    lines = [f"{what} at {path} was built with different settings:"]
    lines += [f"  {name}: stored {old!r}, requested {new!r}" for name, old, new in differences]
    lines.append(rebuild or f"Rebuild it: rerun with --overwrite or delete {path}")
    return ProvenanceMismatchError("\n".join(lines))


def fingerprint_of(
    layout: Mapping[str, Any], sources: Any, shard_checksums: Sequence[Mapping[str, str]]
) -> str:
    """sha256 over a canonical JSON description: layout, source list and per-shard checksums.

    No paths or mtimes enter, so a copied or re-created store with the same content has the same
    fingerprint, and rewriting any tile differently changes it.
    """
    description = {"layout": layout, "sources": sources, "shards": list(shard_checksums)}
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
