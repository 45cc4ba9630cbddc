"""JSON-Schema checks with the standard library only, for a Slicer without ``jsonschema``.

Covers the keywords the card and training-config schemas use; messages follow jsonschema's wording,
so both validators give the same one-line errors.
"""

from __future__ import annotations

from typing import Any

_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def structuralErrors(schema: dict, value: Any, path: str = "", root: dict | None = None) -> list[tuple[str, str]]:
    """Errors of ``value`` against the JSON-Schema keywords the card schemas use, stdlib only.

    Keywords: type, const, enum, required, properties, additionalProperties (false), items,
    minItems, maxItems, minLength, maxLength, minimum, maximum, exclusiveMinimum, exclusiveMaximum,
    pattern, oneOf. Messages follow jsonschema's wording.
    """
    import re

    root = schema if root is None else root
    if "$ref" in schema:
        schema = resolveReference(root, schema["$ref"])
    errors: list[tuple[str, str]] = []
    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        if not any(_JSON_TYPES[kind](value) for kind in allowed):
            return [(path, f"{value!r} is not of type {', '.join(repr(k) for k in allowed)}")]
    if "const" in schema and value != schema["const"]:
        errors.append((path, f"{schema['const']!r} was expected"))
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, f"{value!r} is not one of {schema['enum']!r}"))
    if "oneOf" in schema:
        passing = [option for option in schema["oneOf"] if not structuralErrors(option, value, path, root)]
        if len(passing) != 1:
            errors.append((path, f"{value!r} is not valid under any of the given schemas"))
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append((path, f"{name!r} is a required property"))
        for name, subschema in schema.get("properties", {}).items():
            if name in value:
                errors += structuralErrors(subschema, value[name], f"{path}/{name}" if path else name, root)
        unexpected = [name for name in value if name not in schema.get("properties", {})]
        if schema.get("additionalProperties") is False and unexpected:
            names = ", ".join(repr(name) for name in unexpected)
            errors.append((path, f"Additional properties are not allowed ({names} {'was' if len(unexpected) == 1 else 'were'} unexpected)"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append((path, f"{value!r} should be non-empty" if schema["minItems"] == 1 else f"{value!r} is too short"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append((path, f"{value!r} is too long"))
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += structuralErrors(schema["items"], item, f"{path}/{index}" if path else str(index), root)
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append((path, f"{value!r} should be non-empty"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"{value[:40]!r}... is too long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append((path, f"{value!r} does not match {schema['pattern']!r}"))
    if _JSON_TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append((path, f"{value!r} is less than the minimum of {schema['minimum']!r}"))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append((path, f"{value!r} is greater than the maximum of {schema['maximum']!r}"))
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            errors.append((path, f"{value!r} is less than or equal to the minimum of {schema['exclusiveMinimum']!r}"))
        if "exclusiveMaximum" in schema and not value < schema["exclusiveMaximum"]:
            errors.append((path, f"{value!r} is greater than or equal to the maximum of {schema['exclusiveMaximum']!r}"))
    return errors


def resolveReference(root: dict, reference: str) -> dict:
    """A ``#/$defs/NAME`` reference inside the schema ``root``."""
    node: Any = root
    for part in reference.lstrip("#/").split("/"):
        node = node[part]
    return node


__all__ = ["structuralErrors", "resolveReference"]
