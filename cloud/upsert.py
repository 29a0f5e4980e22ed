"""Bringing one catalog row to what a spec says, for idempotent loaders (`load_catalog`): the
row is written only when a field differs, so a second run changes nothing and says so."""

from __future__ import annotations

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
OUTCOMES = (CREATED, UPDATED, UNCHANGED)


def row_upsert(row, *, make, defaults: dict, on_create_only: tuple[str, ...] = ()) -> tuple[object, str]:
    """`row`: the existing row or None; `make(**defaults)` builds a new one. Fields in
    `on_create_only` are set on a new row and left alone on an existing one (its value has an
    owner of its own since). Validates before writing. Returns the row and CREATED, UPDATED or
    UNCHANGED."""
    if row is None:
        row = make(**defaults)
        row.full_clean()
        row.save()
        return row, CREATED
    changed = [field for field, value in defaults.items()
               if field not in on_create_only and getattr(row, field) != value]
    if not changed:
        return row, UNCHANGED
    for field in changed:
        setattr(row, field, defaults[field])
    row.full_clean()
    # A stamp like `updated_at` (auto_now) moves with the change, as a full save would move it.
    stamps = [f.name for f in row._meta.concrete_fields if getattr(f, "auto_now", False) and f.name not in changed]
    row.save(update_fields=changed + stamps)
    return row, UPDATED
