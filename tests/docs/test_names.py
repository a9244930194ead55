"""No doc names an exit code or a metric the code does not have: every `exit N` in README.md and
docs/*.md is an ExitCode (docs/runbooks.md lists them), every `bigbertha_*` metric is one the
code exposes. A table's "Before" column tells what the code used to do, so it is left out."""

from __future__ import annotations

import re
from pathlib import Path

from bigbertha.core.errors import ExitCode
from tests.docs.snippets import DOCS, ROOT


def _current(path: Path) -> str:
    """The text of `path` without the cells of any table column headed "Before"."""
    out, before = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            before = None
            out.append(line)
            continue
        cells = line.split("|")
        if before is None:
            heads = [c.strip() for c in cells]
            before = heads.index("Before") if "Before" in heads else -1
        elif before >= 0 and before < len(cells):
            cells[before] = ""
        out.append("|".join(cells))
    return "\n".join(out)


def test_every_exit_code_in_the_docs_is_one_the_cli_returns() -> None:
    codes = {int(c) for c in ExitCode}
    found = {
        (str(path.relative_to(ROOT)), int(m[1]))
        for path in DOCS
        for m in re.finditer(r"\bexit(?:s| code| codes| with)?\s+(\d+)\b", _current(path))
    }
    assert len(found) > 5
    unknown = sorted(f"{where}: exit {code}" for where, code in found if code not in codes)
    assert not unknown, f"not an ExitCode (core/errors.py): {unknown}"


def test_every_metric_in_the_docs_is_one_the_code_exposes() -> None:
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for top in ("src", "templates")
        for p in (ROOT / top).rglob("*")
        if p.is_file() and p.suffix in {".py", ".yaml", ".tpl"}
    )
    named = {m for p in DOCS for m in re.findall(r"\bbigbertha_[a-z_]+[a-z]\b", p.read_text())}
    assert len(named) > 5
    # A histogram's series are its name plus a suffix the client library adds.
    unknown = sorted(n for n in named if re.sub(r"_(bucket|sum|count|created)$", "", n) not in code)
    assert not unknown, f"no such metric in src/ or templates/: {unknown}"
