"""Readers: text and its page/section out of PDF, Markdown, text, HTML and DOCX; bad input rejected.

PDFs and DOCX files are generated with pypdf and python-docx (tests/documents/helpers.py).
"""

from __future__ import annotations

import pytest

from bigbertha.documents import readers
from bigbertha.documents.readers import Rejected, Section
from tests.documents.helpers import make_docx, make_pdf


def test_pdf_text_is_read_per_page_with_page_numbers() -> None:
    data = make_pdf(["Llamas live in the Andes.\nThey eat grass.", "", "Alpacas have soft wool."])
    sections = readers.read("animals.pdf", data)
    assert [s.page for s in sections] == [1, 3]  # the blank page adds nothing
    assert "Llamas live in the Andes." in sections[0].text
    assert "They eat grass." in sections[0].text
    assert "Alpacas have soft wool." in sections[1].text


def test_pdf_encrypted_without_user_password_is_read() -> None:
    # Owner-password-only PDFs open for everyone; refusing them would lose documents.
    data = make_pdf(["Open to all readers."], password="")
    assert "Open to all readers." in readers.read("open.pdf", data)[0].text


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("locked.pdf", make_pdf(["secret plans"], password="hunter2"), "encrypted PDF"),
        ("broken.pdf", make_pdf(["text"])[:300], "corrupt PDF"),
        ("fake.pdf", b"just some words, no header", "corrupt PDF: no %PDF- header"),
        ("scan.pdf", make_pdf([""]), "no extractable text"),
        ("empty.md", b"", "empty file (0 bytes)"),
        ("image.png", b"\x89PNG\r\n\x1a\n....", "unsupported file type '.png'"),
        ("README", b"text without an extension", "unsupported file type without an extension"),
        ("blob.txt", bytes(range(256)) * 4, "binary data under a text extension"),
        ("ctrl.md", b"\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0e\x0f" * 20, "binary data"),
        ("latin1.txt", "café crème".encode("latin-1"), "not UTF-8 (byte 0xe9 at offset 3)"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "corrupt DOCX"),
        ("notes.docx", make_pdf(["a pdf renamed"]), "corrupt DOCX"),
        ("blank.html", b"<html><body><script>x()</script></body></html>", "no extractable text"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as err:
        readers.read(name, data)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)  # one line per rejected object
    assert err.value.exit_code == 3


def test_markdown_sections_follow_headings_and_keep_code_blocks() -> None:
    text = (
        "# Handbook\n\nIntro text.\n\n## Setup\n\nRun the installer.\n\n"
        "```sh\n# not a heading\nmake setup\n```\n\n### Linux\n\nUse apt.\n"
    )
    sections = readers.read("handbook.md", text.encode())
    by_section = {s.section: s.text for s in sections}
    assert list(by_section) == ["Handbook", "Handbook > Setup", "Handbook > Setup > Linux"]
    assert "# not a heading" in by_section["Handbook > Setup"]
    assert "Use apt." in by_section["Handbook > Setup > Linux"]


def test_plain_text_utf8_bom_and_utf16_are_decoded() -> None:
    assert readers.read("a.txt", "\ufeffcafé au lait".encode())[0] == Section("café au lait")
    assert readers.read("b.txt", "thé vert".encode("utf-16"))[0].text == "thé vert"


def test_html_visible_text_by_heading_without_scripts_or_styles() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<nav>Home | About</nav><h1>Guide</h1><p>First   paragraph.</p>"
        "<script>alert('x')</script><h2>Details</h2><ul><li>one</li><li>two</li></ul>"
        "</body></html>"
    )
    sections = readers.read("guide.html", html.encode())
    assert [s.section for s in sections] == ["Guide", "Guide > Details"]
    joined = "\n".join(s.text for s in sections)
    assert "First paragraph." in joined and "one" in joined and "two" in joined
    assert "alert" not in joined and "color" not in joined and "Home | About" not in joined


def test_docx_headings_become_sections_and_tables_are_kept() -> None:
    data = make_docx(
        [
            ("h1", "Policy"),
            ("p", "Everyone gets a llama."),
            ("h2", "Exceptions"),
            ("p", "Alpacas on request."),
            ("table", "Name|Animal;Ana|llama"),
        ]
    )
    sections = readers.read("policy.docx", data)
    by_section = {s.section: s.text for s in sections}
    assert "Everyone gets a llama." in by_section["Policy"]
    assert "Alpacas on request." in by_section["Policy > Exceptions"]
    assert "Ana | llama" in by_section["Policy > Exceptions"]
