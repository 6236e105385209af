"""Multipart/form-data for uploads that fit in memory (the search request's hot path), parsed by python-multipart.

Werkzeug's streaming parser compiles two regular expressions for each request's boundary (a new random string
every time, so `re`'s cache never helps) and scans the body in 64 KiB events. An upload here is at most
MAX_UPLOAD_MB and is read whole anyway, so the body goes to python-multipart's parser (the one Starlette uses) in
one write. A parser is a security surface: this one is maintained and fuzzed by others, where a hand-written one
was not. Every other content type still goes to Werkzeug, and `request.form` / `request.files` behave as before.
"""

from __future__ import annotations

from io import BytesIO
from typing import IO, Any

from flask import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header


class _Parts:
    """python-multipart's callbacks, collecting each part's headers and content."""

    def __init__(self, max_parts: int | None) -> None:
        self.max_parts = max_parts
        self.parts: list[tuple[list[tuple[str, str]], list[bytes]]] = []
        self.field, self.value = b"", b""
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_part_data": self.data, "on_end": self.end}

    def begin(self) -> None:
        if self.max_parts is not None and len(self.parts) >= self.max_parts:
            raise RequestEntityTooLarge(f"more than {self.max_parts} form parts")
        self.parts.append(([], []))

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.parts[-1][0].append((self.field.decode("latin-1").strip(), self.value.decode("latin-1").strip()))
        self.field, self.value = b"", b""

    def data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].append(data[start:end])

    def end(self) -> None:
        self.ended = True


def _crlf_before_empty_parts(body: bytes, delimiter: bytes) -> bytes:
    """Werkzeug's encoder (Flask's test client) follows an empty part's headers by the next delimiter, without the
    CRLF that RFC 2046 puts before every delimiter; Werkzeug's parser reads it, python-multipart does not. Put the
    CRLF back where a part's blank line is directly followed by a delimiter (a delimiter cannot occur in content)."""
    if b"\r\n\r\n" + delimiter not in body:
        return body
    out, done = [], 0
    at = body.find(delimiter)
    while at >= 0:
        following = body.find(delimiter, at + len(delimiter))
        if following < 0:
            break
        if body[following - 4:following] == b"\r\n\r\n" and body.find(b"\r\n\r\n", at) == following - 4:
            out += [body[done:following], b"\r\n"]
            done = following
        at = following
    return b"".join([*out, body[done:]])


def parse_multipart(body: bytes, boundary: bytes, max_parts: int | None = None,
                    max_field_bytes: int | None = None) -> tuple[MultiDict, MultiDict]:
    """Split a multipart/form-data body into its fields and files (RFC 7578).

    Args:
        body: the whole request body.
        boundary: the Content-Type's boundary parameter.
        max_parts: more parts than this is a 413 (Werkzeug's `max_form_parts`).
        max_field_bytes: more bytes of non-file fields than this is a 413 (Werkzeug's `max_form_memory_size`).

    Returns:
        (fields: name -> str values, files: name -> FileStorage), in the order the parts came.

    Raises:
        ValueError: the body is not multipart data with this boundary (no closing delimiter, a part without a
            Content-Disposition or without a name).
        RequestEntityTooLarge: past max_parts or max_field_bytes.
    """
    if not boundary:
        raise ValueError("multipart body without a boundary")
    collected = _Parts(max_parts)
    body = _crlf_before_empty_parts(body, b"--" + boundary)
    try:
        parser = MultipartParser(boundary, collected.callbacks())
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ValueError(f"malformed multipart body: {exc}") from None
    if not collected.ended:
        raise ValueError("the multipart body ends before its closing boundary")
    fields: MultiDict = MultiDict()
    files: MultiDict = MultiDict()
    field_bytes = 0
    for header_list, chunks in collected.parts:
        headers = Headers(header_list)
        disposition, options = parse_options_header(headers.get("Content-Disposition"))
        if disposition != "form-data" or "name" not in options:
            raise ValueError("a multipart part is not form-data with a name")
        content = b"".join(chunks)
        if "filename" in options:
            files.add(options["name"], FileStorage(BytesIO(content), options["filename"], options["name"],
                                                   headers.get("Content-Type"), len(content), headers))
            continue
        field_bytes += len(content)
        if max_field_bytes is not None and field_bytes > max_field_bytes:
            raise RequestEntityTooLarge(f"form fields larger than {max_field_bytes} bytes")
        charset = parse_options_header(headers.get("Content-Type", ""))[1].get("charset", "utf-8")
        try:
            fields.add(options["name"], content.decode(charset, "replace"))
        except LookupError:  # a charset Python does not know
            raise ValueError(f"a multipart field has an unknown charset {charset!r}") from None
    return fields, files


class InMemoryFormDataParser(FormDataParser):
    """Werkzeug's form parser with multipart bodies parsed by `parse_multipart` (everything else unchanged)."""

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> tuple[IO[bytes], MultiDict, MultiDict]:
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        try:
            fields, files = parse_multipart(stream.read(), (options or {}).get("boundary", "").encode("latin-1"),
                                            self.max_form_parts, self.max_form_memory_size)
        except ValueError:
            if not self.silent:
                raise
            return stream, self.cls(), self.cls()
        return stream, fields, files


class SearchRequest(Request):
    """The app's request class: Flask's, with the in-memory multipart parser."""

    form_data_parser_class: Any = InMemoryFormDataParser
