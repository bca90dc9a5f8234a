#!/usr/bin/env python3
"""List the public symbols of the given modules that have no doc comment; exit 1 if there are any.

Usage: scripts/check-doc-comments.py SYMBOL_GRAPH_DIR MODULE...

Reads the symbol graphs the DocC plugin extracted (MODULE.symbols.json and MODULE@Other.symbols.json, the
latter for extensions of other modules' types). A symbol counts when it is public or open and declared in
Sources/MODULE/; one that implements a protocol requirement and inherits the requirement's documentation
counts as documented, as DocC shows that documentation. Standard library only.
"""
import glob
import json
import os
import sys


def main():
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    root, modules = sys.argv[1], sys.argv[2:]
    missing = []
    for module in modules:
        files = glob.glob(os.path.join(root, "**", module + ".symbols.json"), recursive=True)
        files += glob.glob(os.path.join(root, "**", module + "@*.symbols.json"), recursive=True)
        if not files:
            sys.stderr.write(f"check-doc-comments: no symbol graph of {module} under {root}\n")
            return 1
        seen = set()
        for path in files:
            with open(path) as f:
                graph = json.load(f)
            for symbol in graph["symbols"]:
                if symbol.get("accessLevel") not in ("public", "open"):
                    continue
                if symbol["kind"]["identifier"] == "swift.extension":
                    continue
                uri = symbol.get("location", {}).get("uri", "")
                if f"/Sources/{module}/" not in uri:
                    continue  # synthesized, or declared in another module
                if symbol.get("docComment", {}).get("lines"):
                    continue
                line = symbol["location"]["position"]["line"] + 1
                where = f"{uri.split('/Sources/', 1)[1]}:{line}"
                if (where, symbol["identifier"]["precise"]) in seen:
                    continue
                seen.add((where, symbol["identifier"]["precise"]))
                name = ".".join(symbol["pathComponents"])
                missing.append(f"Sources/{where}: {symbol['kind']['displayName'].lower()} {name}")
    for entry in sorted(missing):
        print(entry)
    if missing:
        print(f"{len(missing)} public symbols without a doc comment", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
