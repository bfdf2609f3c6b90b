"""The committed OpenAPI schema (backend/openapi.json): generate it, or check that it matches the code.

    python -m safemotion.serve.openapi            # rewrite backend/openapi.json
    python -m safemotion.serve.openapi --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(schema_text())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
