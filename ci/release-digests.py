#!/usr/bin/env python3
"""Digests of a release's images, as values overrides: `digests.yaml`.

    ci/release-digests.py METADATA OUTPUT

METADATA is the file `docker buildx bake --metadata-file` writes (the bake action's `metadata`
output): per bake target, `image.name` (the pushed tags) and `containerimage.digest`
(the digest of the multi-platform index, attestations included). OUTPUT gets, for every values
block that runs one of these images, `<block>.digest`, so `helm install ... -f digests.yaml` pins
each image by the bytes that were signed. Standard output: `<repository> <digest>` per image,
one line each, for `cosign sign` (.github/workflows/release.yml).

Standard library only: it runs on a bare GitHub-hosted runner. tests/test_github_workflow.py
checks that BLOCKS names exactly the image blocks of values.yaml that run these images.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

#: bake target (docker/docker-bake.json) -> the values blocks whose image it is.
BLOCKS = {
    "exporter": ["exporter.image"],
    "chat": ["chatbot.image", "serving.sync.image", "workflows.ingest.image"],
    "trainer": ["workflows.image"],
}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def repository(image_name: str) -> str:
    """`registry/repo:tag[,registry/repo:tag2]` -> `registry/repo` (the first tag's)."""
    first = image_name.split(",")[0].strip()
    name, _, tag = first.rpartition(":")
    return name if name and "/" not in tag else first


def overrides(metadata: dict[str, dict[str, str]]) -> tuple[dict[str, object], list[str]]:
    """(nested values overrides, `<repository> <digest>` lines) from bake's metadata."""
    values: dict[str, object] = {}
    signed = []
    for target, blocks in BLOCKS.items():
        result = metadata.get(target)
        if not result:
            raise SystemExit(f"release-digests: bake metadata has no target {target!r}")
        digest = result.get("containerimage.digest", "")
        if not DIGEST.match(digest):
            raise SystemExit(f"release-digests: {target}: containerimage.digest is {digest!r}")
        signed.append(f"{repository(result['image.name'])} {digest}")
        for block in blocks:
            node = values
            for key in block.split("."):
                node = node.setdefault(key, {})  # type: ignore[assignment]
            node["digest"] = digest  # type: ignore[index]
    return values, signed


def to_yaml(node: dict[str, object], indent: int = 0) -> str:
    """Block-style YAML of nested mappings of strings (all this file ever holds)."""
    lines = []
    for key, value in node.items():
        if isinstance(value, dict):
            lines.append(f"{' ' * indent}{key}:")
            lines.append(to_yaml(value, indent + 2))
        else:
            lines.append(f'{" " * indent}{key}: "{value}"')
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    metadata = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    values, signed = overrides(metadata)
    header = (
        "# Image digests of this release (cosign-signed; docs/images.md). Pass with -f after\n"
        "# your values files: each image is then pulled by digest, whatever its tag.\n"
    )
    Path(argv[2]).write_text(header + to_yaml(values) + "\n", encoding="utf-8")
    print("\n".join(signed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
