"""Reading client files: ``clients/<slug>.yaml`` in, a validated :class:`ClientInventory` out.

Any problem becomes an :class:`~core.errors.InventoryError` whose lines read
``<file>:<line>: <field path>: <what is wrong> (allowed: <what is allowed>)``: YAML
errors, duplicate keys, a slug that is not the file name, and every validation error
(located in the file with :mod:`inventory.document`, explained with
:mod:`inventory.schema`). The loader is offline: it never talks to Prefect.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from core.errors import InventoryError
from inventory.base import ERROR_TYPE
from inventory.document import lookup, parse, problem, problem_at
from inventory.models import ClientInventory
from inventory.schema import describe, resolve
from inventory.types import SLUG

#: Inventory files larger than this are refused (they are a few kB in practice).
MAX_FILE_BYTES = 1024 * 1024

_TOP_LEVEL_KEYS = ", ".join(ClientInventory.model_fields)


def _format_validation_errors(
    exc: ValidationError, shown: str, root: yaml.Node | None
) -> list[str]:
    problems: list[str] = []
    errors = exc.errors()
    for error in errors:
        if error["type"] == "too_short" and any(
            len(other["loc"]) > len(error["loc"])
            and other["loc"][: len(error["loc"])] == error["loc"]
            for other in errors
        ):
            continue  # "0 items after validation" only because every item failed: noise
        ctx = error.get("ctx") or {}
        loc = (
            [*error["loc"], *ctx.get("at", ())]
            if error["type"] == ERROR_TYPE
            else list(error["loc"])
        )
        path, node, parent = resolve(loc)
        text = problem_at(root, shown, path, describe(error, node, parent, path))
        if text not in problems:
            problems.append(text)
    return problems


def load_client(path: Path | str) -> ClientInventory:
    """Read and validate one client file.

    Args:
        path: ``clients/<slug>.yaml``; the slug inside must equal the file stem.

    Returns:
        The validated inventory (its :attr:`ClientInventory.source` is ``path``).

    Raises:
        InventoryError: the file cannot be read, is not valid YAML, has duplicate keys,
            is empty or not a mapping, fails validation, or its slug does not match the
            file name. Each problem line names the file, line, field and what is allowed.
    """
    path = Path(path)
    shown = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InventoryError(
                shown, [f"{shown}: file is {size} bytes (allowed: at most {MAX_FILE_BYTES})"]
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(shown, [f"{shown}: cannot read: {exc}"]) from exc
    root, data = parse(text, shown)
    if data is None:
        raise InventoryError(
            shown, [f"{shown}: file is empty (allowed: a mapping with keys {_TOP_LEVEL_KEYS})"]
        )
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise InventoryError(
            shown,
            [
                f"{shown}:{line}: the top level is a {kind}; it must be a mapping"
                f" (allowed keys: {_TOP_LEVEL_KEYS})"
            ],
        )

    # Top-level keys starting with "x-" are ignored: a place for YAML anchors (as in compose files).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    problems: list[str] = []
    client = data.get("client")
    slug = client.get("slug") if isinstance(client, dict) else None
    if isinstance(slug, str) and slug != path.stem:
        _, line = lookup(root, ["client", "slug"])
        problems.append(
            problem(
                shown,
                line,
                ["client", "slug"],
                f"slug {slug!r} does not match the file name {path.name!r}"
                f" (allowed: {path.stem!r}; rename the file to {slug}.yaml or change the slug)",
            )
        )
    try:
        inventory = ClientInventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(shown, problems + _format_validation_errors(exc, shown, root)) from exc
    if problems:
        raise InventoryError(shown, problems)
    inventory._source = path
    return inventory


def load_inventory(directory: Path | str) -> dict[str, ClientInventory]:
    """Read every ``*.yaml`` client file in ``directory``, sorted by name.

    Returns:
        Inventories by slug.

    Raises:
        InventoryError: any file is invalid (all problems of all files are reported), or a
            file uses the ``.yml`` extension (which would otherwise be silently ignored).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InventoryError(str(directory), [f"{directory}: not a directory of client files"])
    problems: list[str] = [
        f"{stray}: client files must end in .yaml (allowed: rename to {stray.stem}.yaml)"
        for stray in sorted(directory.glob("*.yml"))
    ]
    inventories: dict[str, ClientInventory] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            inventory = load_client(path)
        except InventoryError as exc:
            problems.extend(exc.problems)
        else:
            inventories[inventory.slug] = inventory
    if problems:
        raise InventoryError(str(directory), problems)
    return inventories


def load_client_by_slug(directory: Path | str, slug: str) -> ClientInventory:
    """Read ``<directory>/<slug>.yaml``.

    Raises:
        InventoryError: the slug is malformed or there is no such file (the message lists
            the available slugs), or the file is invalid.
    """
    directory = Path(directory)
    path = directory / f"{slug}.yaml"
    if not re.fullmatch(SLUG.pattern, slug):
        raise InventoryError(
            str(path),
            [f"{directory}: client {slug!r} is not a valid slug (allowed: {SLUG.allowed})"],
        )
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yaml"))
        close = difflib.get_close_matches(slug, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InventoryError(
            str(path),
            [
                f"{path}: no client {slug!r} in {directory}{hint}"
                f" (available: {', '.join(available) or 'none'})"
            ],
        )
    return load_client(path)
