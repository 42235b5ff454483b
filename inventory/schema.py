"""The JSON Schema of a client file, and what it says is allowed, for error messages.

:func:`schema_json` is the text committed as ``docs/inventory.schema.json`` (regenerate
it with ``python -m inventory schema -o docs/inventory.schema.json``). The loader walks
the same schema to turn a pydantic error into ``<what is wrong> (allowed: <what is
allowed>)`` with :func:`resolve` and :func:`describe`.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from inventory.base import ERROR_TYPE
from inventory.models import ClientInventory
from inventory.servers import DEFAULTABLE_KEYS


@functools.cache
def _model_schema() -> dict[str, Any]:
    return ClientInventory.model_json_schema()


def inventory_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a client inventory file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **json.loads(json.dumps(_model_schema())),
        "title": "caretaker client inventory (clients/<slug>.yaml)",
    }


def schema_json() -> str:
    """The JSON Schema as the text committed in ``docs/inventory.schema.json``."""
    return json.dumps(inventory_json_schema(), indent=2, ensure_ascii=False) + "\n"


def _deref(node: Any) -> dict[str, Any] | None:
    """Follow ``$ref`` and unwrap ``Optional`` (anyOf with null) in the model schema."""
    defs = _model_schema().get("$defs", {})
    for _ in range(10):
        if not isinstance(node, dict):
            return None
        if "$ref" in node:
            node = defs.get(node["$ref"].rsplit("/", 1)[-1])
            continue
        branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
        if "anyOf" in node and len(branches) == 1:
            node = branches[0]
            continue
        return node
    return None


def resolve(
    loc: Sequence[str | int],
) -> tuple[list[str | int], dict[str, Any] | None, dict[str, Any] | None]:
    """Walk a pydantic error location through the schema.

    Returns:
        The location without discriminator tags (as written in the file), the schema node
        there, and the nearest enclosing object node (for unknown keys).
    """
    path: list[str | int] = []
    node: dict[str, Any] | None = _deref(_model_schema())
    parent: dict[str, Any] | None = None
    for part in loc:
        mapping = (node or {}).get("discriminator", {}).get("mapping", {})
        if isinstance(part, str) and part in mapping:
            node = _deref({"$ref": mapping[part]})  # a tag, not a key in the file
            continue
        path.append(part)
        if node is None:
            continue
        if isinstance(part, int):
            node = _deref(node.get("items")) if node.get("type") == "array" else None
        elif "properties" in node:
            parent = node
            node = _deref(node["properties"].get(part))
        else:
            node = None
    return path, node, parent


def _allowed(node: dict[str, Any] | None) -> str | None:
    """A short 'what is allowed' from a schema node."""
    if not node:
        return None
    if "enum" in node:
        return ", ".join(str(v) for v in node["enum"])
    if "const" in node:
        return str(node["const"])
    if "discriminator" in node:
        return ", ".join(node["discriminator"]["mapping"])
    kind = node.get("type")
    if kind in ("integer", "number"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        if low is not None and high is not None:
            return f"{low}..{high}"
        if low is not None:
            return f">= {low}" if "minimum" in node else f"> {low}"
        if high is not None:
            return f"<= {high}" if "maximum" in node else f"< {high}"
        return "an integer"
    if kind == "array":
        if "minItems" in node:
            return f"a list of at least {node['minItems']} item(s)"
        return "a list"
    if kind == "string":
        bits = []
        if "minLength" in node:
            bits.append(f"at least {node['minLength']} characters")
        if "maxLength" in node:
            bits.append(f"at most {node['maxLength']} characters")
        if "pattern" in node:
            bits.append(f"matching {node['pattern']}")
        return ", ".join(bits) or "a string"
    if kind == "boolean":
        return "true or false"
    if "properties" in node:
        return "a mapping with keys " + ", ".join(node["properties"])
    if "anyOf" in node:
        options = [_allowed(_deref(b)) for b in node["anyOf"] if b.get("type") != "null"]
        return " or ".join(o for o in options if o) or None
    return None


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def describe(
    error: Mapping[str, Any],
    node: dict[str, Any] | None,
    parent: dict[str, Any] | None,
    path: Sequence[str | int],
) -> str:
    """One error as '<what is wrong> (allowed: ...)'."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    allowed: str | None
    if kind == ERROR_TYPE:
        message, allowed = ctx["message"], ctx.get("allowed")
    elif kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        keys = list((parent or {}).get("properties", {}))
        close = difflib.get_close_matches(key, keys, n=1)
        message = f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        return f"{message} (allowed keys: {', '.join(keys)})" if keys else message
    elif kind == "missing":
        if len(path) == 3 and path[0] == "servers" and path[2] in DEFAULTABLE_KEYS:
            return f"Field required (expected: set {path[2]} on the server or in defaults)"
        description = (node or {}).get("description")
        expected = _first_sentence(description) if description else _allowed(node)
        return f"Field required (expected: {expected})" if expected else "Field required"
    elif kind == "literal_error":
        message = f"{error.get('input')!r} is not one of the choices"
        allowed = _allowed(node) or ctx.get("expected")
    elif kind == "union_tag_invalid":
        message = f"unknown type {ctx.get('tag')!r}"
        allowed = _allowed(node)
    elif kind == "union_tag_not_found":
        message = "the 'type' key is missing"
        allowed = _allowed(node)
    elif kind in ("tuple_type", "list_type", "set_type"):
        message, allowed = "Input should be a list", _allowed(node)
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message, allowed = "Input should be a mapping", _allowed(node)
    elif kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        most = "least" if kind == "too_short" else "most"
        message = f"List should have at {most} {bound} item(s), not {ctx.get('actual_length')}"
        allowed = _allowed(node)
    elif kind == "invalid_key":
        message, allowed = f"key {error.get('input')!r} is not a string", "string keys"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        allowed = _allowed(node)
    return f"{message} (allowed: {allowed})" if allowed else message
