"""A multipart/form-data parser for uploads that fit in memory: the search request's hot path.

Werkzeug's streaming parser compiles two regular expressions for each request's boundary (a new random string
every time, so `re`'s cache never helps) and scans the body in 64 KiB events. An upload here is at most
MAX_UPLOAD_MB and is read whole anyway, so one pass of `bytes.find` over the body does the same work. Every
other content type still goes to Werkzeug, and `request.form` / `request.files` behave as before.
"""

from __future__ import annotations

from io import BytesIO
from typing import IO, Any

from flask import Request
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

CRLF = b"\r\n"


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
        ValueError: the body is not multipart data with this boundary (no opening or closing delimiter, a part
            without headers or without a name).
        RequestEntityTooLarge: past max_parts or max_field_bytes.
    """
    if not boundary:
        raise ValueError("multipart body without a boundary")
    delimiter = b"--" + boundary
    fields: MultiDict = MultiDict()
    files: MultiDict = MultiDict()
    at = body.find(delimiter)
    if at < 0 or (at and body[at - 2:at] != CRLF):
        raise ValueError("the multipart body does not start with its boundary")
    at += len(delimiter)
    parts = field_bytes = 0
    while not body.startswith(b"--", at):  # "--boundary--" closes the body
        line_end = body.find(CRLF, at)
        if line_end < 0 or body[at:line_end].strip(b" \t"):
            raise ValueError("a multipart boundary is not followed by a line break")
        start = line_end + 2
        if body.startswith(CRLF, start):  # a part without headers
            raise ValueError("a multipart part has no Content-Disposition header")
        headers_end = body.find(CRLF + CRLF, start)
        if headers_end < 0:
            raise ValueError("a multipart part's headers do not end")
        # An empty part may end right after its headers' line break (Werkzeug's own encoder writes it so).
        end = body.find(CRLF + delimiter, headers_end + 2)
        if end < 0:
            raise ValueError("the multipart body ends before its closing boundary")
        parts += 1
        if max_parts is not None and parts > max_parts:
            raise RequestEntityTooLarge(f"more than {max_parts} form parts")
        headers = Headers([tuple(s.strip() for s in line.split(":", 1))
                           for line in body[start:headers_end].decode("latin-1").split("\r\n") if ":" in line])
        disposition, options = parse_options_header(headers.get("Content-Disposition"))
        if disposition != "form-data" or "name" not in options:
            raise ValueError("a multipart part is not form-data with a name")
        content = body[headers_end + 4:end] if end > headers_end + 2 else b""
        if "filename" in options:
            files.add(options["name"], FileStorage(BytesIO(content), options["filename"], options["name"],
                                                   headers.get("Content-Type"), len(content), headers))
        else:
            field_bytes += len(content)
            if max_field_bytes is not None and field_bytes > max_field_bytes:
                raise RequestEntityTooLarge(f"form fields larger than {max_field_bytes} bytes")
            charset = parse_options_header(headers.get("Content-Type", ""))[1].get("charset", "utf-8")
            fields.add(options["name"], content.decode(charset, "replace"))
        at = end + 2 + len(delimiter)
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
