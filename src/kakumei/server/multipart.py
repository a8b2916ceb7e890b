"""multipart/form-data bodies, for the one API that sends them (OpenAI's /v1/images/edits).

The body is read first (within server/limits.py's max_body_bytes) and parsed here, in the
parse pool, with python-multipart; every part stays in memory (the body already was), so
nothing is written to disk and nothing outlives the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import ParseError
from python_multipart.multipart import Field, File, create_form_parser, parse_options_header

# Parts one form may carry: the edits API has eight fields or so; thousands of tiny parts
# would only cost the parser time.
MAX_PARTS = 64


class FormError(ValueError):
    """A body that is not a multipart form this server can read; the sentence says why."""


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None


def is_form(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


def form_parts(raw: bytes | bytearray, content_type: str) -> dict[str, list[Part]]:
    """The parts of a multipart/form-data body by field name, in order."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise FormError("send the form as multipart/form-data with a boundary")
    parts: dict[str, list[Part]] = {}
    count = 0

    def add(part: Part) -> None:
        nonlocal count
        count += 1
        if count > MAX_PARTS:
            raise FormError(f"the form has more than {MAX_PARTS} parts")
        parts.setdefault(part.name, []).append(part)

    def on_field(field: Field) -> None:
        add(Part(_text(field.field_name), field.value or b""))

    def on_file(file: File) -> None:
        file.file_object.seek(0)
        data = file.file_object.read()
        file.close()
        add(Part(_text(file.field_name), data, _text(file.file_name)))

    headers = {"Content-Type": content_type.encode("latin-1")}
    # Files stay in memory: the body is in memory already, and bounded by max_body_bytes.
    config = {"MAX_MEMORY_FILE_SIZE": len(raw) + 1, "UPLOAD_KEEP_FILENAME": False}
    try:
        parser = create_form_parser(headers, on_field, on_file, config=config)
        parser.write(bytes(raw))
        parser.finalize()
    except (ParseError, ValueError) as exc:
        if isinstance(exc, FormError):
            raise
        raise FormError("the multipart form cannot be parsed: " + (str(exc).splitlines() or ["malformed"])[0][:200]) from None
    return parts


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")
