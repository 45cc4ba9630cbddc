"""``medsegunet models list|pull``: the catalog on the command line."""

from __future__ import annotations

import json

from ..models.catalog import loadCatalog, localCopy, modelsTable, pullModel


def addParser(subparsers) -> None:
    """Register ``medsegunet models list|pull``."""
    parser = subparsers.add_parser(
        "models",
        help="list or download the catalog's models",
        description="The model catalog (MEDSEGUNET_CATALOG replaces the shipped one; MEDSEGUNET_CACHE is the cache folder).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "list", help="the catalog's models and whether they are on this machine (cached, or shipped with the package)"
    )
    listing.add_argument("--json", action="store_true", help="print the catalog entries as JSON")
    listing.set_defaults(func=runList)
    pull = actions.add_parser("pull", help="download a model once (checked by SHA256) and print its cached path")
    pull.add_argument("name", metavar="NAME")
    pull.add_argument(
        "--format", choices=("torchscript", "pt2"), default="torchscript", help="which file of the model: TorchScript (default) or its .pt2"
    )
    pull.set_defaults(func=runPull)


def runList(args, console) -> int:
    import sys

    catalog = loadCatalog()
    if getattr(args, "json", False):
        entries = []
        for entry in catalog["models"]:
            path, where = localCopy(entry)
            entries.append(
                {**entry, "cached_path": str(path) if path is not None else None, "offline": where if path is not None else None}
            )
        sys.stdout.write(json.dumps({"source": catalog["source"], "models": entries}, indent=2) + "\n")
    else:
        sys.stdout.write(modelsTable(catalog))
    return 0


def runPull(args, console) -> int:
    import sys

    from .console import ConsoleProgress

    # Standard output is the path alone (M=$(medsegunet models pull NAME)), so in a log the
    # progress lines go to stderr; on a terminal the bar is drawn there anyway.
    progress = console if console.interactive else ConsoleProgress(quiet=console.quiet, stream=sys.stderr)
    path = pullModel(args.name, progress=progress, format=args.format)
    console.close()
    sys.stdout.write(f"{path}\n")
    return 0


__all__ = ["addParser", "runList", "runPull"]
