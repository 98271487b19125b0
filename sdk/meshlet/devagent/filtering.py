"""Consul's ``?filter=`` expressions (go-bexpr), compiled once into a predicate over one rendered JSON
element (an AgentService, a CheckServiceNode ``{Node, Service, Checks}``, a HealthCheck, an Intention).

A small lexer and recursive-descent parser turn the text into nested closures, so a listing costs one
parse and one cheap call per element. The semantics are bexpr's over Consul's structs, read over JSON:

* Selectors name JSON keys exactly (case-sensitive): ``Service.Meta.env``, ``Meta["a key"]``, ``Tags.0``.
* A selector that crosses a list (``Checks.Status``) applies the whole match, operator included, to each
  element and holds when any element matches: ``Checks.Status != "passing"`` means "some check is not
  passing". Trap: crossing an empty list matches nothing, not even ``is empty``.
* A missing key, or a ``null`` on the way, is absent: ``!=``, ``not in``, ``not contains``,
  ``not matches`` and ``is empty`` hold, the other operators do not.
* A value is text read in the type of the selected value: ``Port == 8080`` and ``Port == "8080"`` agree,
  booleans take Go's ``ParseBool`` spellings (``true``, ``T``, ``1``...), and a bare word is its own text.
* Where bexpr fails the whole request on a type mismatch (``Port == "http"``, ``Tags == "x"``,
  ``Port matches "8"``), this module answers "no match", so the negated operator matches.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

Predicate = Callable[[Any], bool]
T = TypeVar("T")


class FilterError(ValueError):
    """The expression does not parse; the message starts with ``line:column (offset):`` as bexpr's do."""


@functools.lru_cache(maxsize=256)
def compile_filter(expression: str) -> Predicate:
    """Compile a bexpr expression into a predicate over one rendered JSON element (cached: blocking
    queries re-run the same filter on every wake-up)."""
    return _Parser(expression).parse()


# ------------------------------------------------------------------------------------------ lexing


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # word, index, string, number, ( ) == != . [ ], invalid or end
    text: str  # as written
    value: str  # a string literal's contents, otherwise the text
    start: int
    spaced: bool  # whitespace comes before it


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_/]*")
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")


def _position(source: str, offset: int) -> str:
    """``line:column (offset)``, the way bexpr's parser names a place."""
    line = source.count("\n", 0, offset) + 1
    column = offset - source.rfind("\n", 0, offset)
    return f"{line}:{column} ({offset})"


def _error(source: str, offset: int, message: str) -> FilterError:
    return FilterError(f"{_position(source, offset)}: {message}")


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while True:
        start = pos
        while pos < len(source) and source[pos] in " \t\r\n":
            pos += 1
        spaced = pos > start
        if pos == len(source):
            tokens.append(_Token("end", "", "", pos, spaced))
            return tokens
        after_dot = bool(tokens) and tokens[-1].kind == "." and not spaced
        if after_dot and (digits := _DIGITS.match(source, pos)):
            kind, end = "index", digits.end()
        elif word := _WORD.match(source, pos):
            kind, end = "word", word.end()
        elif number := _NUMBER.match(source, pos):
            kind, end = "number", number.end()
            if end < len(source) and source[end] not in " \t\r\n)":
                found = f"expected a space, ')' or the end after {source[pos:end]}, found {source[end]!r}"
                raise _error(source, pos, f"invalid number literal: {found}")
        elif source[pos] in '"`':
            end, value = _read_string(source, pos)
            tokens.append(_Token("string", source[pos:end], value, pos, spaced))
            pos = end
            continue
        elif source.startswith(("==", "!="), pos):
            kind, end = source[pos : pos + 2], pos + 2
        elif source[pos] in "().[]":
            kind, end = source[pos], pos + 1
        else:
            kind, end = "invalid", pos + 1
        tokens.append(_Token(kind, source[pos:end], source[pos:end], pos, spaced))
        pos = end


def _read_string(source: str, start: int) -> tuple[int, str]:
    """Read a backtick raw string or a double-quoted one with Go's escapes; return its end and contents."""
    if source[start] == "`":
        end = source.find("`", start + 1)
        if end < 0:
            raise _error(source, start, "unterminated string literal: expected a closing '`'")
        return end + 1, source[start + 1 : end].replace("\r", "")  # as Go's strconv.Unquote does
    out: list[str] = []
    pos = start + 1
    while pos < len(source):
        char = source[pos]
        if char == '"':
            return pos + 1, "".join(out)
        if char == "\n":
            raise _error(source, pos, "newline in string literal: expected a closing '\"' first")
        if char != "\\":
            out.append(char)
            pos += 1
            continue
        code = source[pos + 1 : pos + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            pos += 2
            continue
        digits, base = _escape_digits(source, pos)
        point = int(digits, base) if digits else -1
        if not (0 <= point <= 0x10FFFF) or 0xD800 <= point <= 0xDFFF:
            raise _error(source, pos, f"invalid escape sequence {source[pos : pos + 2]!r} in string literal")
        out.append(chr(point))
        pos += 1 + len(digits) if base == 8 else 2 + len(digits)
    raise _error(source, start, "unterminated string literal: expected a closing '\"'")


def _escape_digits(source: str, pos: int) -> tuple[str, int]:
    """The digits and base of the ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH`` or ``\\OOO`` escape at `pos`; no
    digits when it is malformed. (Go makes ``\\xHH`` and ``\\OOO`` a byte; here they are code points.)"""
    code = source[pos + 1 : pos + 2]
    if code in _HEX_ESCAPES:
        width = _HEX_ESCAPES[code]
        digits, allowed, base = source[pos + 2 : pos + 2 + width], _HEX_DIGITS, 16
    elif code and code in _OCTAL_DIGITS:
        width, digits, allowed, base = 3, source[pos + 1 : pos + 4], _OCTAL_DIGITS, 8
    else:
        return "", 16
    well_formed = len(digits) == width and set(digits) <= allowed and not (base == 8 and int(digits, 8) > 0xFF)
    return (digits if well_formed else ""), base


# ------------------------------------------------------------------------------------------ parsing


MAX_NESTING = 64
"""Parentheses and ``not`` nest at most this deep: each level is a frame of this parser and of the predicate,
and a caller's ``((((...`` must get a 400, not exhaust Python's stack (bexpr has no such limit; no real
filter comes near it)."""


class _Parser:
    """Precedence climbs ``or`` < ``and`` < ``not`` < parentheses < one match expression."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.at = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.at += 1
        return token

    def is_word(self, *words: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "word" and token.text in words

    def accept(self, *words: str) -> str | None:
        """Take the next token if it is one of `words`, and say which it was."""
        return self.take().text if self.is_word(*words) else None

    def fail(self, expected: str) -> FilterError:
        token = self.peek()
        found = "the end of the expression" if token.kind == "end" else repr(token.text)
        return _error(self.source, token.start, f"expected {expected}, found {found}")

    def parse(self) -> Predicate:
        predicate = self.parse_or()
        if self.peek().kind != "end":
            raise self.fail('"and", "or" or the end of the expression')
        return predicate

    def parse_or(self) -> Predicate:
        terms = [self.parse_and()]
        while self.accept("or"):
            terms.append(self.parse_and())
        return _any(terms)

    def parse_and(self) -> Predicate:
        terms = [self.parse_not()]
        while self.accept("and"):
            terms.append(self.parse_not())
        return _all(terms)

    def parse_not(self) -> Predicate:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self.fail(f"at most {MAX_NESTING} levels of parentheses and 'not' (nested too deeply)")
            return self.parse_not_or_group()
        finally:
            self.depth -= 1

    def parse_not_or_group(self) -> Predicate:
        # `not == "x"` or `not.x` would use a field named "not"; anything else after `not` negates.
        if self.is_word("not") and self.peek(1).kind not in ("==", "!=", ".", "["):
            self.take()
            return _negated(self.parse_not())
        if self.peek().kind != "(":
            return self.parse_match()
        opening = self.take()
        inner = self.parse_or()
        if self.peek().kind != ")":
            where = _position(self.source, opening.start)
            raise self.fail(f'")" to close the "(" at {where} (unmatched parentheses)')
        self.take()
        return inner

    def parse_match(self) -> Predicate:
        token = self.peek()
        if token.kind in ("string", "number"):
            return self.parse_membership(self.take().value)
        if token.kind != "word" or token.text in ("and", "or"):
            raise self.fail('a selector, a quoted value or "("')
        path = self.parse_selector()
        if self.is_word("in") or (self.is_word("not") and self.is_word("in", ahead=1)):
            return self.parse_membership(".".join(path))  # a bare word is a value: `primary in Tags`
        operator = self.peek()
        if operator.kind in ("==", "!="):
            self.take()
            test = _equals(self.parse_value(operator.text))
            return _select(path, test if operator.kind == "==" else _negated(test))
        if self.accept("is"):
            negate = bool(self.accept("not"))
            if not self.accept("empty"):
                raise self.fail('"empty" or "not empty" after "is"')
            return _select(path, _negated(_is_empty) if negate else _is_empty)
        negate = bool(self.accept("not"))
        word = self.accept("contains", "matches")
        if word is None and negate:
            raise self.fail('"in", "contains" or "matches" after "not"')
        if word is None:
            raise self.fail("an operator (==, !=, is empty, is not empty, [not] in, [not] contains, [not] matches)")
        test = _contains(self.parse_value(word)) if word == "contains" else _matches(self.parse_pattern())
        return _select(path, _negated(test) if negate else test)

    def parse_membership(self, value: str) -> Predicate:
        """``<value> in <selector>`` and ``<value> not in <selector>``."""
        negate = bool(self.accept("not"))
        if not self.accept("in"):
            raise self.fail('"in" after "not"' if negate else '"in" or "not in" after a value')
        if self.peek().kind != "word":
            raise self.fail('a selector after "in" (invalid selector)')
        test = _contains(value)
        return _select(self.parse_selector(), _negated(test) if negate else test)

    def parse_selector(self) -> tuple[str, ...]:
        path = [self.take().text]
        while self.peek().kind in (".", "[") and not self.peek().spaced:
            if self.take().kind == ".":
                if self.peek().kind not in ("word", "index") or self.peek().spaced:
                    raise self.fail('a field name right after "."')
                path.append(self.take().text)
                continue
            if self.peek().kind != "string":
                raise self.fail('a quoted key after "[" (invalid index)')
            path.append(self.take().value)
            if self.peek().kind != "]":
                raise self.fail('"]" to close the index expression')
            self.take()
        return tuple(path)

    def parse_value(self, after: str) -> str:
        token = self.peek()
        if token.kind in ("string", "number"):
            return self.take().value
        if token.kind == "word":
            return ".".join(self.parse_selector())
        raise self.fail(f'a value after "{after}" (a "string", a `raw string` or a number)')

    def parse_pattern(self) -> re.Pattern[str]:
        start = self.peek().start
        pattern = self.parse_value("matches")
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise _error(self.source, start, f"invalid regular expression {pattern!r}: {exc}") from None


# ------------------------------------------------------------------------------------------ evaluating

Test = Callable[[Any], bool]
"""One operator applied to the selected value, which may be :data:`_ABSENT`."""

_ABSENT: Final = object()
_TRUE_WORDS = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE_WORDS = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_OCTAL = re.compile(r"[+-]?0[0-7_]+")


def _select(path: tuple[str, ...], test: Test) -> Predicate:
    """Walk `path` into an element and apply `test` at its end. A step that meets a list fans out over
    its elements and any match wins (bexpr's implicit "any"); a step of digits indexes the list instead."""

    def walk(value: Any, depth: int) -> bool:
        while depth < len(path):
            step = path[depth]
            if isinstance(value, dict):
                value = value.get(step, _ABSENT)
            elif isinstance(value, list):
                if not (step.isascii() and step.isdigit()):
                    return any(walk(item, depth) for item in value)
                value = value[int(step)] if int(step) < len(value) else _ABSENT
            else:
                return test(_ABSENT)
            depth += 1
        return test(value)

    return lambda datum: walk(datum, 0)


def _any(terms: list[Predicate]) -> Predicate:
    """One predicate for ``a or b or ...``, flat: a chain of thousands of terms is a loop, not a recursion."""
    if len(terms) == 1:
        return terms[0]
    return lambda datum: any(term(datum) for term in terms)


def _all(terms: list[Predicate]) -> Predicate:
    if len(terms) == 1:
        return terms[0]
    return lambda datum: all(term(datum) for term in terms)


def _negated(inner: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: not inner(value)


def _equals(text: str) -> Test:
    """``==`` reads the value's text in the selected value's type; an absent value equals nothing."""
    as_bool = True if text in _TRUE_WORDS else False if text in _FALSE_WORDS else None
    as_int, as_float = _parsed(text, _go_int), _parsed(text, float)

    def test(value: Any) -> bool:
        if isinstance(value, str):
            return value == text
        if isinstance(value, bool):
            return value is as_bool
        if isinstance(value, int):
            return value == as_int
        if isinstance(value, float):
            return value == as_float
        return False

    return test


def _go_int(text: str) -> int:
    """Go's ``strconv.ParseInt(text, 0, 64)``: 0x/0o/0b prefixes, and a leading 0 means octal."""
    return int(text, 8) if _GO_OCTAL.fullmatch(text) else int(text, 0)


def _parsed(text: str, parse: Callable[[str], T]) -> T | None:
    if text != text.strip():  # Python forgives surrounding spaces, Go does not
        return None
    try:
        return parse(text)
    except ValueError:
        return None


def _contains(text: str) -> Test:
    """Substring of a string, key of a map, element of a list (each element read in its own type)."""
    equals = _equals(text)

    def test(value: Any) -> bool:
        if isinstance(value, str | dict):
            return text in value
        if isinstance(value, list):
            return any(equals(item) for item in value)
        return False

    return test


def _is_empty(value: Any) -> bool:
    if value is _ABSENT or value is None:
        return True
    if isinstance(value, str | list | dict):
        return not value
    return False


def _matches(pattern: re.Pattern[str]) -> Test:
    return lambda value: isinstance(value, str) and pattern.search(value) is not None
