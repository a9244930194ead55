"""What the document tests share: generated PDF and Word files, `bigbertha ingest` run
in-process, and the chunks Milvus holds for a source. Fixtures are in conftest.py."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from typer.testing import CliRunner, Result

from bigbertha.cli import app
from bigbertha.core import settings as settings_mod

Env = Callable[..., settings_mod.Settings]  # the `env` fixture: configure, return the settings


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[str], *, password: str | None = None) -> bytes:
    """A PDF with one page per string (Helvetica text, one line per '\\n')."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    font_ref = writer._add_object(font)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})}
        )
        lines = " T* ".join(f"({_pdf_escape(line)}) Tj" for line in text.splitlines())
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 11 Tf 14 TL 72 720 Td {lines} ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if password is not None:
        writer.encrypt(user_password=password, owner_password="owner-secret", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx(blocks: list[tuple[str, str]]) -> bytes:
    """A Word document from (kind, text) blocks: kind 'h1'..'h3', 'p', or 'table' (a|b;c|d)."""
    import docx

    document = docx.Document()
    for kind, text in blocks:
        if kind.startswith("h"):
            document.add_heading(text, level=int(kind[1:]))
        elif kind == "table":
            rows = [row.split("|") for row in text.split(";")]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
        else:
            document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def ingest(*args: str) -> tuple[Result, dict[str, Any]]:
    """Run `bigbertha ingest ARGS` in-process; the report is the last line of stdout."""
    result = CliRunner().invoke(app, ["ingest", *args])
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return result, report


def chunks(settings: settings_mod.Settings, source: str) -> dict[str, dict[str, Any]]:
    """Chunk id → row for every chunk Milvus holds for `source`."""
    from bigbertha.documents import vectorstore

    store = vectorstore.open_store(settings, create=False)
    expr = f"doc_id == {vectorstore.quote(source)}"
    fields = ["id", "text", "source", "etag", "version_id", "page", "section"]
    rows = store.client.query(
        settings.milvus.collection, filter=expr, output_fields=[*fields, "chunk_index", "file_name"]
    )
    return {row["id"]: row for row in rows}


def full_text_hits(settings: settings_mod.Settings, words: str) -> list[str]:
    """Texts Milvus' BM25 index alone finds for `words` (no dense vectors involved)."""
    from bigbertha.documents import vectorstore

    store = vectorstore.open_store(settings, create=False)
    hits = store.client.search(
        settings.milvus.collection,
        data=[words],
        anns_field=vectorstore.SPARSE_FIELD,
        limit=5,
        output_fields=[vectorstore.TEXT_FIELD],
        search_params={"params": {"drop_ratio_search": 0}},  # milvus-lite accepts only 0
    )
    return [h["entity"][vectorstore.TEXT_FIELD] for h in hits[0]]
