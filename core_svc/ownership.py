"""Who may change what in core: every dataset, model, pipeline and run has an owner.

The owner is the subject of whoever created the resource (`mesh.identity`), stored on its row; a run's owner is
whoever started it, whoever owns its pipeline. Viewers read everything and change nothing. Editors create, and
change, delete or cancel only what they own; they may run any pipeline, since the run is theirs. Admins (and
services of the mesh) change everything. Rows from before owners existed have an empty owner and belong to
nobody: only an admin changes them.

A refusal is PERMISSION_DENIED naming the rule, never the owner or anything else about the resource.
"""

from __future__ import annotations

from mesh.errors import PermissionDenied, shorten
from mesh.identity import Identity

# The filter value that means "the caller": `owner = "me"`.
ME = "me"


def check_may_create(caller: Identity, kind: str) -> None:
    if not caller.at_least("editor"):
        raise PermissionDenied(f"a {caller.role} may only read; creating a {kind} needs an editor or an admin")


def check_may_change(caller: Identity, kind: str, resource_id: str, owner: str) -> None:
    """Raises PermissionDenied unless `caller` may change, delete, or cancel the `kind` `resource_id` that `owner`
    owns."""
    if caller.is_admin:
        return
    if not caller.at_least("editor"):
        raise PermissionDenied(f"a {caller.role} may only read; changing a {kind} needs its owner or an admin")
    if owner and owner == caller.subject:
        return
    shown = shorten(resource_id)
    if not owner:
        raise PermissionDenied(f"{kind} {shown!r} has no owner (it predates owners): only an admin may change it")
    raise PermissionDenied(f"{kind} {shown!r} is not yours: an editor changes only what it owns; ask an admin")


def owner_wanted(value: str, caller: Identity) -> str:
    """The owner an `owner = "..."` filter term asks for: "me" is the caller."""
    return caller.subject if value == ME else value
