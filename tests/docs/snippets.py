"""What README.md and docs/*.md tell a user to run: the shell blocks and inline commands, split
into argv lists the tests check against the real CLI, Makefile and chart."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?(.*?)\n.*?^\s*\1\s*$", re.S | re.M)
OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}


@dataclass(frozen=True)
class Command:
    """One simple command of a snippet: where it is written and its words."""

    where: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def shell_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every fenced shell block in `path`."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) in SHELL_LANGS
    ]


def split(script: str) -> list[list[str]]:
    """The simple commands of a shell script: continuations joined, comments and heredoc
    bodies dropped, split at `&&`, `|`, `;`, `&`; redirections and `VAR=value` prefixes removed;
    `kubectl exec ... -- cmd` is `cmd` (what runs in the pod)."""
    script = HEREDOC.sub(lambda m: m.group(2), script.replace("\\\n", " "))
    script = re.sub(r"<([A-Za-z][\w.-]*)>", r"\1", script)  # <REVISION>: a word, not a redirect
    commands: list[list[str]] = []
    pending = ""
    for line in script.splitlines():
        pending += line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # a quoted string goes on over the next line
            pending += "\n"
            continue
        pending = ""
        current: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in OPERATORS:
                commands.append(current)
                current = []
            elif token in {">", ">>", "<", "2>", "<<"}:
                i += 1  # and its target
            elif not current and re.fullmatch(r"[A-Za-z_]\w*=.*", token):
                pass  # an environment assignment before the command
            elif re.fullmatch(r"\[(-[^\]]+)\]", token):
                current.append(token[1:-1])  # [--json]: an optional flag, as usage lines write it
            else:
                current.append(token)
            i += 1
        commands.append(current)
    out = []
    for argv in filter(None, commands):
        if argv[0] == "kubectl" and "exec" in argv and "--" in argv:
            argv = argv[argv.index("--") + 1 :]
        out.append(argv)
    return out


def commands(tool: str) -> list[Command]:
    """Every command of `tool` in the docs' shell blocks."""
    found = []
    for path in DOCS:
        for line, block in shell_blocks(path):
            for argv in split(block):
                if Path(argv[0]).name == tool:
                    found.append(Command(f"{path.relative_to(ROOT)}:{line}", tuple(argv)))
    return found


INLINE = re.compile(r"(?<!`)`((?:bigbertha|make|helm|promtool) [^`\n]+)`")


def inline_commands(tool: str) -> list[Command]:
    """`tool ...` code spans in the prose (placeholders such as `<subcommand>` left out)."""
    found = []
    for path in DOCS:
        # Blocks blanked line for line, so a span's line number is the file's.
        text = FENCE.sub(lambda b: "\n" * b.group(0).count("\n"), path.read_text("utf-8"))
        for m in INLINE.finditer(text):
            if m.group(1).split()[0] != tool or "<" in m.group(1):
                continue
            line = text.count("\n", 0, m.start()) + 1
            for argv in split(m.group(1))[:1]:  # `helm template ... | grep`: the first only
                found.append(Command(f"{path.relative_to(ROOT)} (prose, line {line})", tuple(argv)))
    return found
