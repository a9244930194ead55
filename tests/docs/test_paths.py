"""Every repository path the docs, comments and docstrings name exists: README.md and docs/*.md
whole; in Python files the comments and docstrings; in the chart, scripts and Makefile their
comments. A path is repo-relative (`templates/...`, `tests/...`) or, in prose about the package,
package-relative (`core/errors.py` is src/bigbertha/core/errors.py). `tests/<file>.py::<test>`
names a test that must exist, and so does every `test_...` the docs cite. Placeholders
(`values/<env>.yaml`) match as globs."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

from tests.docs.snippets import DOCS, ROOT

TOPS = "src|tests|docs|templates|values|bench|ci|files|gitops|docker|charts|\\.ci"
PACKAGES = "core|chat|documents|telemetry|models|training|serving|local"
PATH = re.compile(
    rf"(?<![\w./-])((?:{TOPS})/[\w.*<>{{}}/-]*[\w*>}}]|(?:{PACKAGES})/\w+\.py)(::\w+)?"
)
# Named on purpose although they are not in the repository, each with its reason.
NOT_FILES = {
    "charts/*.tgz": "what `make deps` writes (charts/ is not in git)",
    # Paths inside other projects, named where we follow them:
    "docs/deployment/docker.md": "vLLM's docs (docs/gpu.md)",
    "docs/enhanced-depends-logic.md": "Argo Workflows' docs (local/gateway.py)",
    "charts/crds/crds": "inside kube-prometheus-stack's archive (docs/install.md, crds.py)",
    "files/crds/full": "inside argo-workflows' archive (docs/install.md)",
    "templates/config.tpl": "milvus 5.0.19's template (templates/validate.yaml)",
    "templates/prometheus/service.yaml": "kube-prometheus-stack's template (workflows)",
    "templates/exporters": "kube-prometheus-stack's templates (test_kubernetes.py)",
}


def _python_text(path: Path) -> str:
    """Comments and docstrings of a Python file."""
    source = path.read_text(encoding="utf-8")
    parts = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def _comments(path: Path) -> str:
    """`#` comments and `{{/* */}}` blocks of a template, YAML file, script or Makefile."""
    text = path.read_text(encoding="utf-8")
    return "\n".join(
        re.findall(r"(?m)(?:^|\s)#(.*)$", text) + re.findall(r"\{\{-?\s*/\*(.*?)\*/", text, re.S)
    )


def _sources() -> dict[str, str]:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in DOCS}
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or name.startswith(("charts/", "ci/node_modules")):
            continue
        if path.suffix == ".py":
            texts[name] = _python_text(path)
        elif path.suffix in {".yaml", ".yml", ".tpl", ".sh", ".txt"} or path.name in {
            "Makefile",
            "run",
            "Dockerfile",
        }:
            texts[name] = _comments(path)
    return texts


def _exists(named: str) -> bool:
    if "<" in named or "{" in named or "*" in named:
        pattern = re.sub(r"<[^>]*>|\{[^}]*\}", "*", named)
        return any(ROOT.glob(pattern))
    # `tests/chart/cluster`: a module named without its suffix.
    return (ROOT / named).exists() or (ROOT / f"{named}.py").is_file()


def _missing() -> list[str]:
    missing = []
    for where, text in _sources().items():
        for m in PATH.finditer(text):
            named, test = m.group(1).rstrip("."), m.group(2)
            if named in NOT_FILES:
                continue
            path = named if re.match(rf"(?:{TOPS})/", named) else f"src/bigbertha/{named}"
            if not _exists(path):
                missing.append(f"{where}: {named}")
            elif test and not re.search(
                rf"^\s*(?:async )?def {test[2:]}\(|^class {test[2:]}\b",
                (ROOT / path).read_text(encoding="utf-8"),
                re.M,
            ):
                missing.append(f"{where}: {named}{test} (no such test)")
    return sorted(set(missing))


def test_every_named_path_and_test_exists() -> None:
    missing = _missing()
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def _defined_tests() -> set[str]:
    return {
        m
        for path in (ROOT / "tests").rglob("test_*.py")
        for m in re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M)
    }


def test_every_test_the_docs_cite_exists() -> None:
    cited = {
        (str(path.relative_to(ROOT)), name)
        for path in DOCS
        for name in re.findall(r"`(?:[\w/.]+::)?(test_\w+)(?:\[[^\]`]*\])?`", path.read_text())
    }
    assert len(cited) > 20  # docs/reliability.md's tables cite their tests
    defined = _defined_tests()
    missing = sorted(f"{where}: {name}" for where, name in cited if name not in defined)
    assert not missing, "cited but not defined in tests/:\n" + "\n".join(missing)
