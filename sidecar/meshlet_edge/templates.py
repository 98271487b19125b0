"""HTTP path templates of ``google.api.http`` (google/api/http.proto, AIP-127): parsed once per route, then matched
per request against the raw (still percent-encoded) path. Pure: no I/O, no protobuf.

``Template = "/" Segments [ ":" Verb ]``; a segment is a literal, ``*`` (one segment), ``**`` (zero or more, last
only) or ``{field.path=Segments}`` (``{name}`` alone is ``{name=*}``). A variable over one segment is
percent-decoded fully; one over several keeps ``%2F`` as it came, so a slash the client escaped stays data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LITERAL = re.compile(r"^[^/{}*:]+$")
_SLASH = re.compile(r"(%2[Ff])")

ONE = "*"
ANY = "**"


class TemplateError(ValueError):
    """A template that breaks the grammar: the message names the template and what is wrong."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One template segment: a literal (`text`), or ``*`` / ``**``; `variable` names the field it binds, if any."""

    text: str
    variable: str | None = None

    @property
    def is_literal(self) -> bool:
        return self.text not in (ONE, ANY)


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template: its pieces in order, its custom verb, and the fields its variables bind."""

    source: str
    pieces: tuple[Piece, ...]
    verb: str | None
    variables: tuple[str, ...]
    # The template as one regular expression, where it can be one (no ``**``, each variable one segment): a path
    # without a percent-escape matches it or not as the segment walk would decide, in one call.
    plain: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @property
    def literal_count(self) -> int:
        """How specific the template is: a route with more literal segments is tried first."""
        return sum(piece.is_literal for piece in self.pieces)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The variables bound by `raw_path` (percent-encoded, no query), or None when it does not match."""
        if self.plain is not None and "%" not in raw_path:  # nothing to decode: the common path
            found = self.plain.fullmatch(raw_path)
            return None if found is None else dict(zip(self.variables, found.groups(), strict=True))
        if not raw_path.startswith("/"):
            return None
        body = raw_path[1:]
        if self.verb is not None:
            suffix = ":" + self.verb
            if not body.endswith(suffix):
                return None
            body = body[: -len(suffix)]
        segments = body.split("/")
        bound: dict[str, list[str]] = {}
        index = 0
        for piece in self.pieces:
            if piece.text == ANY:
                taken = segments[index:]
                index = len(segments)
                if taken == [""]:
                    taken = []  # "/v1/files/" and "/v1/files" both leave ** empty
            else:
                if index >= len(segments) or segments[index] == "":
                    return None
                segment = segments[index]
                if piece.is_literal and segment != piece.text and unquote(segment) != piece.text:
                    return None
                taken = [segment]
                index += 1
            if piece.variable is not None:
                bound.setdefault(piece.variable, []).extend(taken)
        if index != len(segments):
            return None
        return {name: _decode(parts) for name, parts in bound.items()}

    def __str__(self) -> str:
        return self.source


def _decode(parts: list[str]) -> str:
    """One segment fully decoded; several joined by "/" with an escaped slash kept escaped. Bytes that are not
    UTF-8 stay as lone surrogates (``surrogateescape``), never silently replaced: see `not_utf8`."""
    if len(parts) == 1:
        return _unquote(parts[0])
    return "/".join(_decode_keeping_slash(part) for part in parts)


def _decode_keeping_slash(part: str) -> str:
    """`part` decoded around its %2F escapes, each kept as it came (a multi-byte character's escapes decode as one)."""
    pieces = _SLASH.split(part)  # text, "%2F", text, ...
    return "".join(piece if index % 2 else _unquote(piece) for index, piece in enumerate(pieces))


def _unquote(text: str) -> str:
    return unquote(text, errors="surrogateescape")


def not_utf8(value: str) -> bool:
    """True when a decoded value held percent-escapes that are not UTF-8 (which a proto string cannot carry)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def parse(template: str) -> PathTemplate:
    """Parse `template`; raises TemplateError naming what breaks the grammar."""

    def fail(why: str) -> TemplateError:
        return TemplateError(f"path template {template!r}: {why}")

    if not template.startswith("/"):
        raise fail("must start with '/'")
    body = template[1:]
    verb: str | None = None
    closing = body.rfind("}")
    colon = body.rfind(":")
    if colon > closing and "/" not in body[colon:]:
        body, verb = body[:colon], body[colon + 1 :]
        if not _LITERAL.match(verb):
            raise fail(f"custom verb {verb!r} must be a literal")
    pieces: list[Piece] = []
    variables: list[str] = []
    for token in _split_top_level(body, fail):
        if token.startswith("{"):
            name, _, inner = token[1:-1].partition("=")
            if not _FIELD_PATH.match(name):
                raise fail(f"variable {name!r} is not a field path (letters, digits, '_' and '.')")
            if name in variables:
                raise fail(f"variable {name!r} appears twice")
            variables.append(name)
            for text in (inner or ONE).split("/"):
                pieces.append(Piece(_segment(text, fail), name))
        else:
            pieces.append(Piece(_segment(token, fail)))
    for position, piece in enumerate(pieces):
        if piece.text == ANY and position != len(pieces) - 1:
            raise fail("'**' may only be the last segment")
    return PathTemplate(template, tuple(pieces), verb, tuple(variables), _as_pattern(pieces, verb, variables))


def _as_pattern(pieces: list[Piece], verb: str | None, variables: list[str]) -> re.Pattern[str] | None:
    """The template as a regular expression over paths without percent-escapes, one group per variable in order;
    None where ``**`` or a variable over several segments needs the segment walk."""
    if any(piece.text == ANY for piece in pieces) or len(variables) != sum(p.variable is not None for p in pieces):
        return None
    parts = [re.escape(p.text) if p.is_literal else "[^/]+" for p in pieces]
    parts = [f"({part})" if piece.variable is not None else part for part, piece in zip(parts, pieces, strict=True)]
    return re.compile("/" + "/".join(parts) + (":" + re.escape(verb) if verb is not None else ""))


def _split_top_level(body: str, fail: Callable[[str], TemplateError]) -> list[str]:
    """Split on "/" outside braces: ``v1/{name=shelves/*}/books`` -> [v1, {name=shelves/*}, books]."""
    tokens: list[str] = []
    depth = 0
    start = 0
    for position, char in enumerate(body):
        if char == "{":
            if depth:
                raise fail("variables do not nest")
            depth = 1
        elif char == "}":
            if not depth:
                raise fail("'}' without '{'")
            depth = 0
        elif char == "/" and not depth:
            tokens.append(body[start:position])
            start = position + 1
    if depth:
        raise fail("'{' without '}'")
    tokens.append(body[start:])
    return tokens


def _segment(text: str, fail: Callable[[str], TemplateError]) -> str:
    if text in (ONE, ANY) or _LITERAL.match(text):
        return text
    raise fail(f"segment {text!r} is empty or holds a reserved character")


def fill(template: PathTemplate, values: Mapping[str, str]) -> str:
    """The path `template` matches with `values` bound (each one-segment variable's value percent-encoded): the
    inverse of `match`, for tests and for documentation examples."""
    from urllib.parse import quote

    widths = {name: sum(piece.variable == name for piece in template.pieces) for name in template.variables}
    out: list[str] = []
    done: set[str] = set()
    for piece in template.pieces:
        if piece.variable is None:
            out.append(piece.text)
        elif piece.variable not in done:
            done.add(piece.variable)
            value = values[piece.variable]
            out.append(quote(value, safe="") if widths[piece.variable] == 1 and piece.text == ONE else value)
    path = "/" + "/".join(out)
    return path + (":" + template.verb if template.verb else "")
