"""What a run works on, and which Prefect blocks an inventory names.

:func:`select_servers` turns a run's ``scope`` parameter into servers;
:func:`block_references` lists every block an inventory refers to, and
:func:`check_block_references` (called by preflight with the block names it read from
the Prefect API) reports the missing ones with the file and line that name them. The
inventory itself stays offline: nothing here talks to Prefect.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InventoryError
from inventory.document import compose_quietly, problem_at
from inventory.servers import AwsProvider, RackspaceProvider, Server

if TYPE_CHECKING:
    from inventory.models import ClientInventory

#: Kinds of Prefect blocks an inventory refers to (keys of :meth:`ClientInventory.block_names`).
BLOCK_KINDS: tuple[str, ...] = ("ssh", "aws", "rackspace", "notify")


def select_servers(inv: ClientInventory, scope: str) -> tuple[Server, ...]:
    """The servers a run works on, in file order.

    Args:
        inv: the client.
        scope: comma-separated items, each ``all``, ``staging``, ``production`` or a
            server name; the union is returned (``"staging,acme-web-1"`` works).

    Raises:
        InventoryError: an item is neither a role nor a server name, or nothing is selected.
    """
    where = str(inv.source) if inv.source else f"client {inv.slug}"
    names = [s.name for s in inv.servers]
    items = [item.strip() for item in scope.split(",") if item.strip()]
    if not items:
        raise InventoryError(
            where,
            [f"{where}: scope is empty (allowed: all, staging, production, {', '.join(names)})"],
        )
    wanted: set[str] = set()
    problems: list[str] = []
    for item in items:
        if item == "all":
            wanted.update(names)
        elif item in ("staging", "production"):
            wanted.update(s.name for s in inv.servers if s.role == item)
        elif item in names:
            wanted.add(item)
        else:
            close = difflib.get_close_matches(item, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{where}: scope: no server or role {item!r}{hint}"
                f" (allowed: all, staging, production, {', '.join(names)})"
            )
    if problems:
        raise InventoryError(where, problems)
    selected = tuple(s for s in inv.servers if s.name in wanted)
    if not selected:
        raise InventoryError(where, [f"{where}: scope {scope!r} selects no server"])
    return selected


def block_references(inv: ClientInventory) -> list[tuple[str, str, tuple[str | int, ...]]]:
    """Every block reference as (kind, name, field path), kinds from :data:`BLOCK_KINDS`."""
    refs: list[tuple[str, str, tuple[str | int, ...]]] = [
        ("notify", name, ("client", "notify", i)) for i, name in enumerate(inv.client.notify)
    ]
    for i, server in enumerate(inv.servers):
        refs.append(("ssh", server.ssh_block, ("servers", i, "ssh_block")))
        if server.jump and server.jump.ssh_block:
            refs.append(("ssh", server.jump.ssh_block, ("servers", i, "jump", "ssh_block")))
        provider = server.provider
        if isinstance(provider, AwsProvider | RackspaceProvider):
            refs.append(
                (
                    provider.type,
                    provider.credentials_block,
                    ("servers", i, "provider", "credentials_block"),
                )
            )
    return refs


def check_block_references(
    inv: ClientInventory, path: Path | str | None, existing: Mapping[str, set[str]]
) -> None:
    """Check that every block the inventory names exists.

    Args:
        inv: a loaded inventory.
        path: its file (for messages and line numbers); default ``inv.source``.
        existing: block names that exist, by kind (``ssh``, ``aws``, ``rackspace``,
            ``notify``); a kind that is absent counts as having no blocks.

    Raises:
        InventoryError: one line per missing reference, naming the file, line, field, the
            missing block and the existing blocks of that kind.
    """
    file = Path(path) if path is not None else inv.source
    shown = str(file) if file is not None else f"client {inv.slug}"
    root = compose_quietly(file) if file is not None else None
    problems: list[str] = []
    for kind, name, ref_path in block_references(inv):
        have = set(existing.get(kind, set()))
        if name in have:
            continue
        close = difflib.get_close_matches(name, sorted(have), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problem = problem_at(
            root,
            shown,
            list(ref_path),
            f"{kind} block {name!r} does not exist{hint}"
            f" (existing {kind} blocks: {', '.join(sorted(have)) or 'none'})",
        )
        if problem not in problems:
            problems.append(problem)
    if problems:
        raise InventoryError(shown, problems)
