"""The committed OpenAPI schema (backend/openapi.json): generate it, or check that it matches the code.

    python -m safemotion.serve.openapi            # rewrite backend/openapi.json
    python -m safemotion.serve.openapi --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from safemotion.atomic_dir import write_text_atomic

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "openapi.json"


def openapi_schema() -> dict[str, Any]:
    """The API's OpenAPI document (independent of server settings; no model is loaded)."""
    from safemotion.serve.app import create_app
    from safemotion.serve.settings import ServerSettings

    return create_app(ServerSettings()).openapi()


def schema_text() -> str:
    """The schema as committed: indented, keys in the code's order, trailing newline."""
    return json.dumps(openapi_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    """Write the schema to `path` atomically."""
    return write_text_atomic(path, schema_text())


def main(argv: list[str] | None = None) -> int:
    """Write or check the schema file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SCHEMA_FILE)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != schema_text():
            print(f"{args.out} is out of date; run `python -m safemotion.serve.openapi`", file=sys.stderr)
            return 1
        return 0
    print(f"wrote {write_schema(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
