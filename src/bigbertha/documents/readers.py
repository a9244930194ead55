"""Turn document bytes into text sections: PDF, Markdown, plain text, HTML and DOCX.

Each reader uses the library LlamaIndex's own file readers use (pypdf, python-docx,
BeautifulSoup) and returns `Section`s: text plus the page (PDF) or heading path (Markdown, HTML,
DOCX) it came from, which becomes chunk metadata. HTML and DOCX are first rendered as Markdown
headings so one LlamaIndex `MarkdownNodeParser` finds sections for all three.

Input that cannot be read raises `Rejected` with a reason a person can act on; the caller reports
it and carries on with the rest of the batch.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from bigbertha.core.errors import InputError

_SNIFF = 8192
_HEADER_SEP = "\x1f"  # never in a heading, unlike "/"


class Rejected(InputError):
    """This input cannot be ingested; the message is the reason."""


@dataclass(frozen=True)
class Section:
    """A run of text and where in the document it came from."""

    text: str
    page: int | None = None
    section: str | None = None


def suffix(name: str) -> str:
    """Lower-case extension of an object key or file name ('' if none)."""
    return PurePosixPath(name).suffix.lower()


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM optional) or BOM-marked UTF-16; anything else is rejected, not guessed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise Rejected(f"undecodable UTF-16 text ({exc.reason} at byte {exc.start})") from exc
    if b"\x00" in data[:_SNIFF]:
        raise Rejected("binary data under a text extension (NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise Rejected(f"undecodable text: not UTF-8 (byte 0x{bad} at offset {exc.start})") from exc
    controls = sum(1 for ch in text[:_SNIFF] if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > max(8, len(text[:_SNIFF]) // 20):
        raise Rejected("binary data under a text extension (control characters)")
    return text


def markdown_sections(text: str) -> list[Section]:
    """Split Markdown on its headings (LlamaIndex MarkdownNodeParser); code fences are kept."""
    from llama_index.core import Document
    from llama_index.core.node_parser import MarkdownNodeParser

    parser = MarkdownNodeParser(header_path_separator=_HEADER_SEP, include_metadata=True)
    sections = []
    for node in parser.get_nodes_from_documents([Document(text=text)]):
        body = node.get_content()
        path = [p for p in str(node.metadata.get("header_path", "")).split(_HEADER_SEP) if p]
        first = body.lstrip().splitlines()[0] if body.strip() else ""
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", first)
        if heading:
            path.append(heading.group(1))
        sections.append(Section(body, section=" > ".join(path) or None))
    return sections


def read_text(data: bytes) -> list[Section]:
    return [Section(decode_text(data))]


def read_markdown(data: bytes) -> list[Section]:
    return markdown_sections(decode_text(data))


def read_html(data: bytes) -> list[Section]:
    """Visible text of an HTML page, sectioned by its h1-h6 headings."""
    from bs4 import BeautifulSoup

    text = decode_text(data)
    soup = BeautifulSoup(text, "html.parser")
    if soup.find() is None:
        raise Rejected("not HTML (no elements)")
    for tag in soup(["script", "style", "noscript", "template", "head", "nav", "footer"]):
        tag.decompose()
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            title = " ".join(heading.get_text(" ").split())
            heading.replace_with(f"\n\n{'#' * level} {title}\n\n")
    for block in soup.find_all(["p", "div", "li", "tr", "br", "pre", "blockquote", "section"]):
        block.insert_after("\n")
    lines = [" ".join(line.split()) for line in soup.get_text().splitlines()]
    return markdown_sections(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip())


def read_pdf(data: bytes) -> list[Section]:
    """Text per page (1-based page numbers); encrypted PDFs are read only if no password is set."""
    from pypdf import PdfReader

    if not data.lstrip()[:5] == b"%PDF-":
        raise Rejected("corrupt PDF: no %PDF- header")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Rejected("encrypted PDF: a password is required to read it")
        pages = [page.extract_text() or "" for page in reader.pages]
    except Rejected:
        raise
    # pypdf raises many types on malformed input (PdfReadError, KeyError, zlib.error, ...);
    # any of them means this document, not the run, failed.
    except Exception as exc:
        message = "encrypted PDF: " if "crypt" in str(exc).lower() else "corrupt PDF: "
        raise Rejected(message + f"{type(exc).__name__}: {exc}".splitlines()[0][:200]) from exc
    return [Section(text, page=number) for number, text in enumerate(pages, 1) if text.strip()]


def read_docx(data: bytes) -> list[Section]:
    """Paragraphs and tables of a Word document, sectioned by its Heading/Title styles."""
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise Rejected(f"corrupt DOCX: {type(exc).__name__}: {exc}".splitlines()[0][:200]) from exc
    lines: list[str] = []
    for paragraph in document.paragraphs:
        style = paragraph.style.name if paragraph.style is not None else ""
        text = paragraph.text.strip()
        level = re.match(r"^(?:Heading (\d)|(Title))$", style or "")
        if text and level:
            lines += ["", "#" * int(level.group(1) or 1) + " " + text, ""]
        elif text:
            lines.append(text)
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    return markdown_sections("\n".join(lines))


READERS: dict[str, Callable[[bytes], list[Section]]] = {
    ".pdf": read_pdf,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".txt": read_text,
    ".text": read_text,
    ".html": read_html,
    ".htm": read_html,
    ".docx": read_docx,
}


def check_type(name: str) -> Callable[[bytes], list[Section]]:
    """The reader for `name`'s extension; Rejected (before any download) if there is none."""
    kind = suffix(name)
    reader = READERS.get(kind)
    if reader is None:
        supported = ", ".join(sorted(READERS))
        shown = f"'{kind}'" if kind else "without an extension"
        raise Rejected(f"unsupported file type {shown} (supported: {supported})")
    return reader


def read(name: str, data: bytes) -> list[Section]:
    """Sections of the document `name` (its extension picks the reader).

    Raises Rejected: empty, unsupported type, corrupt, encrypted, binary under a text extension,
    undecodable text, or no extractable text.
    """
    reader = check_type(name)
    if not data:
        raise Rejected("empty file (0 bytes)")
    sections = [s for s in reader(data) if s.text.strip()]
    if not sections:
        raise Rejected(
            "no extractable text" + (" (scanned PDF? no OCR)" if reader is read_pdf else "")
        )
    return sections
