"""The SOQL subset the Salesforce sandbox answers, parsed by a small tokenizer into polars expressions.

    SELECT f1, f2 FROM Object [WHERE expr] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST] (, ...)*] [LIMIT n]

where expr is conditions `Field op literal` or parenthesised exprs joined by AND or by OR (mixing
the two needs parentheses, as in Salesforce). Keywords, object and field names are case-insensitive; text
compares case-insensitively (Ids excepted), `!=` also matches nulls, and a literal must have
its field's type, all as in Salesforce.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, NoReturn

import polars as pl

from revenue_pipelines.sandbox.salesforce_data import Field
from revenue_pipelines.sandbox.server import ApiError

TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,3})?(?:Z|[+-]\d\d:?\d\d))
    |(?P<date>\d{4}-\d\d-\d\d)
    |(?P<number>[+-]?\d+(?:\.\d+)?)
    |(?P<string>'(?:[^'\\]|\\.)*')
    |(?P<operator>!=|<>|<=|>=|=|<|>)
    |(?P<comma>,)
    |(?P<open>\()
    |(?P<close>\))
    |(?P<word>[A-Za-z_]\w*)""",
    re.VERBOSE,
)
ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# The Python type a filter literal must have for each field type, and its name in Salesforce's errors.
LITERAL_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "datetime": ((datetime,), "dateTime"),
    "date": ((date,), "date"),
    "boolean": ((bool,), "boolean"),
    "currency": ((int, float), "double"),
    "double": ((int, float), "double"),
    "percent": ((int, float), "double"),
    "int": ((int, float), "int"),
}
COLUMN_HINT = (
    "If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)
OBJECT_HINT = (
    "If you are attempting to use a custom object, be sure to append the '__c' after the entity name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    column: int  # 1-based, as Salesforce reports positions

    def is_keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: Any  # datetime (aware), date, str, int, float, bool or None


@dataclass(frozen=True)
class Junction:
    """Conditions joined by one operator."""

    operator: str  # AND or OR
    parts: tuple[Condition | Junction, ...]


@dataclass(frozen=True)
class Query:
    fields: tuple[str, ...]
    object_name: str
    where: Condition | Junction | None
    order: tuple[tuple[str, bool, bool], ...]  # (field, descending, nulls last)
    limit: int | None


@dataclass(frozen=True)
class Plan:
    """A query resolved against an object's fields: what to select, filter and sort on."""

    object_name: str
    fields: tuple[Field, ...]
    where: pl.Expr
    order: tuple[tuple[str, bool, bool], ...]
    limit: int | None


def plan(text: str, schemas: dict[str, tuple[Field, ...]]) -> Plan:
    """Parse `text` and resolve it against `schemas`, raising Salesforce's 400s when it is wrong."""
    query = parse(text)
    object_name = {name.lower(): name for name in schemas}.get(query.object_name.lower())
    if object_name is None:
        raise ApiError(400, f"sObject type '{query.object_name}' is not supported. {OBJECT_HINT}", "INVALID_TYPE")
    known = {field.name.lower(): field for field in schemas[object_name]}

    def field(name: str) -> Field:
        if name.lower() not in known:
            raise ApiError(400, f"No such column '{name}' on entity '{object_name}'. {COLUMN_HINT}", "INVALID_FIELD")
        return known[name.lower()]

    selected = tuple(field(name) for name in query.fields)
    if len({chosen.name for chosen in selected}) < len(selected):
        duplicate = next(chosen.name for chosen in selected if selected.count(chosen) > 1)
        raise ApiError(400, f"duplicate field selected: {duplicate}", "MALFORMED_QUERY")

    def expression(node: Condition | Junction | None) -> pl.Expr:
        if node is None:
            return pl.lit(True)
        if isinstance(node, Condition):
            return _condition(field(node.field), node)
        join = pl.all_horizontal if node.operator == "AND" else pl.any_horizontal
        return join(*(expression(part) for part in node.parts))

    where = expression(query.where)
    order = tuple((field(name).name, descending, nulls_last) for name, descending, nulls_last in query.order)
    return Plan(object_name, selected, where, order, query.limit)


def _condition(field: Field, condition: Condition) -> pl.Expr:
    column, value = pl.col(field.name), condition.value
    if value is None:
        if condition.operator == "=":
            return column.is_null()
        if condition.operator in ("!=", "<>"):
            return column.is_not_null()
        raise ApiError(400, f"invalid operator on null for field '{field.name}'", "MALFORMED_QUERY")
    types, type_name = LITERAL_TYPES.get(field.type, ((str,), "string"))
    if type(value) not in types:  # exactly: a bool is no number, a datetime no date
        quoted = " and should not be enclosed in quotes" if isinstance(value, str) else ""
        raise ApiError(
            400,
            f"value of filter criterion for field '{field.name}' must be of type {type_name}{quoted}",
            "INVALID_FIELD",
        )
    literal: pl.Expr
    if isinstance(value, datetime):
        literal = pl.lit(value.astimezone(UTC), dtype=field.dtype)
    elif field.is_text and field.type not in ("id", "reference"):
        column, literal = column.str.to_lowercase(), pl.lit(value.lower())
    else:
        literal = pl.lit(value)
    compared = COMPARISONS[condition.operator](column, literal)
    return compared | column.is_null() if condition.operator in ("!=", "<>") else compared


def parse(text: str) -> Query:
    return _Parser(text).query()


class _Parser:
    def __init__(self, text: str):
        self._tokens = _tokenize(text)
        self._position = 0
        self._end = Token("end", "<EOF>", len(text) + 1)

    def query(self) -> Query:
        self._keyword("SELECT")
        fields = self._list(self._name)
        self._keyword("FROM")
        object_name = self._name()
        where = self._expression() if self._accept("WHERE") else None
        order = []
        if self._accept("ORDER"):
            self._keyword("BY")
            order = self._list(self._ordering)
        limit = None
        if self._accept("LIMIT"):
            token = self._next()
            if token.kind != "number" or not token.text.isdigit():
                self._unexpected(token)
            limit = int(token.text)
        if self._peek() is not self._end:
            self._unexpected(self._peek())
        return Query(tuple(fields), object_name, where, tuple(order), limit)

    def _expression(self) -> Condition | Junction:
        parts = [self._operand()]
        joined_by = None
        while self._peek().is_keyword("AND", "OR"):
            token = self._next()
            if joined_by not in (None, token.text.upper()):
                self._unexpected(token)  # AND and OR mixed without parentheses
            joined_by = token.text.upper()
            parts.append(self._operand())
        return parts[0] if joined_by is None else Junction(joined_by, tuple(parts))

    def _operand(self) -> Condition | Junction:
        if self._peek().kind != "open":
            return self._condition()
        self._next()
        inner = self._expression()
        token = self._next()
        if token.kind != "close":
            self._unexpected(token)
        return inner

    def _condition(self) -> Condition:
        field = self._name()
        token = self._next()
        if token.kind != "operator":
            self._unexpected(token)
        return Condition(field, token.text, self._literal())

    def _ordering(self) -> tuple[str, bool, bool]:
        field = self._name()
        descending = False
        if self._peek().is_keyword("ASC", "DESC"):
            descending = self._next().text.upper() == "DESC"
        nulls_last = descending  # Salesforce's default: nulls first ascending, last descending
        if self._accept("NULLS"):
            token = self._next()
            if not token.is_keyword("FIRST", "LAST"):
                self._unexpected(token)
            nulls_last = token.text.upper() == "LAST"
        return field, descending, nulls_last

    def _literal(self) -> Any:
        token = self._next()
        try:
            if token.kind == "datetime":
                return datetime.fromisoformat(token.text)
            if token.kind == "date":
                return date.fromisoformat(token.text)
        except ValueError:
            raise ApiError(400, f"invalid date: {token.text}", "MALFORMED_QUERY") from None
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "string":
            return _unquote(token)
        if token.is_keyword("TRUE", "FALSE", "NULL"):
            return {"TRUE": True, "FALSE": False, "NULL": None}[token.text.upper()]
        self._unexpected(token)

    def _list[T](self, item: Callable[[], T]) -> list[T]:
        items = [item()]
        while self._peek().kind == "comma":
            self._next()
            items.append(item())
        return items

    def _name(self) -> str:
        token = self._next()
        if token.kind != "word":
            self._unexpected(token)
        return token.text

    def _keyword(self, word: str) -> None:
        token = self._next()
        if not token.is_keyword(word):
            self._unexpected(token)

    def _accept(self, word: str) -> bool:
        if self._peek().is_keyword(word):
            self._position += 1
            return True
        return False

    def _peek(self) -> Token:
        return self._tokens[self._position] if self._position < len(self._tokens) else self._end

    def _next(self) -> Token:
        token = self._peek()
        self._position += 1
        return token

    @staticmethod
    def _unexpected(token: Token) -> NoReturn:
        raise ApiError(400, f"ERROR at Row:1:Column:{token.column}\nunexpected token: {token.text}", "MALFORMED_QUERY")


def _tokenize(text: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            raise ApiError(
                400, f"ERROR at Row:1:Column:{position + 1}\nunexpected token: {text[position]}", "MALFORMED_QUERY"
            )
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup or "", match.group(), position + 1))
        position = match.end()
    return tokens


def _unquote(token: Token) -> str:
    characters, escaped = [], False
    for character in token.text[1:-1]:
        if escaped:
            if character not in ESCAPES:
                raise ApiError(
                    400, f"Invalid string literal {token.text}: illegal escape \\{character}", "MALFORMED_QUERY"
                )
            characters.append(ESCAPES[character])
            escaped = False
        elif character == "\\":
            escaped = True
        else:
            characters.append(character)
    return "".join(characters)
