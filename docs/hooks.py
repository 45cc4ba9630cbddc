"""MkDocs hook: links from a page to a repository file outside ``docs/`` point at GitHub.

The pages are read on GitHub too, where ``../Resources/Training/acdc-heart.yaml`` is a working
relative link; the site has no such file, so the link is rewritten to ``REPO/blob/main/PATH``. A
link whose target is not in the repository is reported as a warning, which ``--strict`` makes an
error (MkDocs itself only checks links between pages).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

LOG = logging.getLogger("mkdocs.plugins.medsegunet")
LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")


def on_page_markdown(markdown, page, config, files):
    docsDir = Path(config["docs_dir"]).resolve()
    repository = docsDir.parent
    pageFolder = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match.group(0)
        inDocs = posixpath.normpath(posixpath.join(pageFolder, target))
        if not inDocs.startswith("../"):
            return match.group(0)  # a page or image of the site: MkDocs checks it
        path = (docsDir / pageFolder / target).resolve()
        try:
            relative = path.relative_to(repository).as_posix()
        except ValueError:
            LOG.warning("%s links to %s, outside the repository", page.file.src_uri, target)
            return match.group(0)
        if not path.exists():
            LOG.warning("%s links to %s, which the repository does not have", page.file.src_uri, target)
            return match.group(0)
        kind = "tree" if path.is_dir() else "blob"
        return f"{match.group(1)}{config['repo_url'].rstrip('/')}/{kind}/main/{relative}{match.group(3)}"

    if SCHEMA_MARKER in markdown:
        markdown = withSchemaTables(markdown)
    return LINK.sub(rewrite, markdown)


# The card reference: the marker on docs/card-reference.md becomes tables generated from the card's
# JSON Schema, so the page cannot fall behind what the loader accepts.
SCHEMA_MARKER = "<!-- generated from modelcard.schema.json -->"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "MedSegUNet" / "MedSegUNetLib" / "engine" / "modelcard.schema.json"


def withSchemaTables(markdown: str) -> str:
    import json

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return markdown.replace(SCHEMA_MARKER, "\n".join(schemaTables(schema)))


def schemaTables(schema: dict) -> list[str]:
    """Markdown: one table of the card's top-level fields, then one per object field, depth first."""
    lines: list[str] = []
    pending = [("card", schema, set(schema.get("required", [])))]
    while pending:
        path, node, required = pending.pop(0)
        node = resolve(schema, node)
        properties = node.get("properties", {})
        if not properties:
            continue
        lines += [
            "",
            f"### `{path}`" if path != "card" else "### The card's fields",
            "",
            "| field | required | accepts | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for name, child in properties.items():
            child = resolve(schema, child)
            lines.append(
                f"| `{name}` | {'yes' if name in required else ''} | {accepts(schema, child)} | {cell(child.get('description', ''))} |"
            )
            for objectNode in objectsOf(schema, child):
                pending.append((f"{path}.{name}" if path != "card" else name, objectNode, set(objectNode.get("required", []))))
    return lines


def resolve(schema: dict, node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def objectsOf(schema: dict, node: dict) -> list[dict]:
    """The object schemas a field holds: itself, its list items, or its alternatives'."""
    node = resolve(schema, node)
    if node.get("properties"):
        return [node]
    found = []
    for key in ("items",):
        if isinstance(node.get(key), dict):
            found += objectsOf(schema, node[key])
    for key in ("oneOf", "anyOf"):
        for alternative in node.get(key, []):
            found += objectsOf(schema, alternative)
    return found[:1]


def accepts(schema: dict, node: dict) -> str:
    node = resolve(schema, node)
    if "enum" in node:
        return " \\| ".join(f"`{jsonValue(value)}`" for value in node["enum"])
    if "const" in node:
        return f"`{jsonValue(node['const'])}`"
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(accepts(schema, alternative) for alternative in node[key])
    kind = node.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and isinstance(node.get("items"), dict):
        size = ""
        if node.get("minItems") is not None and node.get("minItems") == node.get("maxItems"):
            size = f" of {node['minItems']}"
        elif node.get("maxItems") is not None:
            size = f" of {node.get('minItems', 0)}–{node['maxItems']}"
        elif node.get("minItems"):
            size = f" of at least {node['minItems']}"
        return f"list{size}: {accepts(schema, node['items'])}"
    bounds = [
        f"≥ {node['minimum']}" if "minimum" in node else "",
        f"> {node['exclusiveMinimum']}" if "exclusiveMinimum" in node else "",
        f"≤ {node['maximum']}" if "maximum" in node else "",
        f"< {node['exclusiveMaximum']}" if "exclusiveMaximum" in node else "",
    ]
    bounds = ", ".join(bound for bound in bounds if bound)
    return f"{kind} ({bounds})" if bounds else kind


def jsonValue(value) -> str:
    import json

    return json.dumps(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
