"""The protocol document lists every method the services implement."""

from __future__ import annotations

from pathlib import Path

from qserver.protocol.api import REQUEST_TYPES

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_protocol_doc_names_every_method() -> None:
    text = DOC.read_text()
    missing = [m for m in REQUEST_TYPES if f"`{m}`" not in text]
    assert not missing, f"docs/protocol.md does not document: {missing}"


def test_the_http_and_protocol_docs_list_nothing_as_not_built() -> None:
    for doc in (DOC, DOC.with_name("http.md")):
        text = " ".join(doc.read_text().lower().split())
        for phrase in ("not built", "not routed", "not implement", "do not implement"):
            assert phrase not in text, f"{doc.name} says {phrase!r}"
