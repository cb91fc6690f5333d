#!/usr/bin/env python3
"""Validate STAC Item JSON files offline.

Usage: validate_stac.py [--schemas DIR] ITEM.json [ITEM.json ...]

For each item:
  1. stac-validator (the `stac_validator` module of the pinned `stac-valid` package) checks it
     against the core Item schema and every schema listed in `stac_extensions`. Every schema
     URL (the Projection, Raster and Classification extensions tessera declares among them),
     including the `$ref`s inside schemas, is resolved through
     tests/stac-schemas/schema-map.json to the local copies in tests/stac-schemas/. The network
     is switched off for this process, so an unmapped schema fails at once with its URL
     instead of being fetched.
  2. Every asset `href` must be a relative path to a file that exists next to the item.

Prints one line per item (`OK path` or `FAIL path: reason; reason`) and exits 1 if any item
failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import warnings
from urllib.parse import urlparse

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMAS = os.path.normpath(os.path.join(HERE, "..", "stac-schemas"))


class OfflineError(OSError):
    """Raised for any attempt to open a network connection."""


def _refuse(*args, **kwargs):
    host = args[0] if args else kwargs.get("host", "?")
    raise OfflineError(
        f"network access refused (offline validation): {host!r}; "
        "is a schema missing from tests/stac-schemas/schema-map.json?"
    )


def go_offline() -> None:
    """Make every name lookup and socket connection fail at once."""
    socket.getaddrinfo = _refuse  # type: ignore[assignment]
    socket.create_connection = _refuse  # type: ignore[assignment]
    socket.socket.connect = lambda self, address: _refuse(address)  # type: ignore[method-assign]


def check_assets(path: str, item: dict) -> list[str]:
    """Problems with the item's asset hrefs: each must be relative and exist next to it."""
    problems = []
    assets = item.get("assets")
    if not isinstance(assets, dict):
        return ["'assets' is missing or not an object"]
    base = os.path.dirname(os.path.abspath(path))
    for key, asset in sorted(assets.items()):
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or not href:
            problems.append(f"asset {key!r}: no href")
            continue
        if urlparse(href).scheme or os.path.isabs(href):
            problems.append(f"asset {key!r}: href {href!r} is not relative")
            continue
        if not os.path.isfile(os.path.join(base, href)):
            problems.append(f"asset {key!r}: {href!r} does not exist next to the item")
    return problems


def schema_problems(path: str, schema_config: str) -> list[str]:
    """Problems stac-validator reports for the item (empty when valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from stac_validator.validate import StacValidate

    stac = StacValidate(stac_file=path, schema_config=schema_config)
    try:
        valid = stac.run()
    except Exception as e:  # stac-validator reports most errors in .message; be safe
        return [f"stac-validator raised {type(e).__name__}: {e}"]
    if valid:
        return []
    problems = []
    for msg in stac.message or [{}]:
        if msg.get("valid_stac", False):
            continue
        text = msg.get("error_message") or msg.get("error_type") or "invalid"
        schema = msg.get("failed_schema")
        problems.append(f"{text.strip()}" + (f" [schema {schema}]" if schema else ""))
    return problems or ["stac-validator: invalid (no message)"]


def validate(path: str, schema_config: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            item = json.load(f)
    except (OSError, ValueError) as e:
        return [f"cannot read JSON: {e}"]
    if not isinstance(item, dict) or item.get("type") != "Feature":
        return ["not a STAC Item (type is not 'Feature')"]
    return schema_problems(path, schema_config) + check_assets(path, item)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="+", metavar="ITEM.json")
    parser.add_argument(
        "--schemas",
        default=DEFAULT_SCHEMAS,
        help="folder with the local schemas and schema-map.json (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    schema_config = os.path.join(args.schemas, "schema-map.json")
    if not os.path.isfile(schema_config):
        print(f"error: {schema_config} not found", file=sys.stderr)
        return 2
    go_offline()
    failed = 0
    for path in args.items:
        problems = validate(path, schema_config)
        if problems:
            failed += 1
            print(f"FAIL {path}: " + "; ".join(p.replace("\n", " ") for p in problems))
        else:
            print(f"OK {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
