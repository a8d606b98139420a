"""SOQL for the emulated org: a recursive-descent parser, a resolver against the schema, an evaluator.

The daemon's queries must behave as against a real org, including how they fail: a misspelt field has
to produce Salesforce's INVALID_FIELD text with the row and column of the offending token, an `AND`
mixed with `OR` without parentheses is MALFORMED_QUERY, a string compared with a date field is refused.
Results come back in REST JSON form: `attributes` on every record, parents nested (null when the lookup
is empty), child subqueries as nested query results (null when empty).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sfsign.emulator import schema as sch
from sfsign.emulator.errors import ApiError
from sfsign.emulator.ids import normalize_id
from sfsign.emulator.schema import FieldSpec, ObjectSpec

if TYPE_CHECKING:
    from sfsign.emulator.access import Access
    from sfsign.emulator.store import OrgStore

_CUSTOM_FIELD_HINT = (
    "If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)
_CUSTOM_REL_HINT = (
    "If you are attempting to use a custom relationship, be sure to append the '__r' after the custom "
    "relationship name. Please reference your WSDL or the describe call for the appropriate names."
)
_CUSTOM_OBJECT_HINT = (
    "If you are attempting to use a custom object, be sure to append the '__c' after the entity name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)
CDL_RESTRICTION = (
    "Implementation restriction: ContentDocumentLink requires a filter by a single Id on ContentDocumentId "
    "or LinkedEntityId using the equals operator or multiple Id's using the IN operator."
)
MAX_OFFSET = 2000
_ECHO_BEFORE = 32

KEYWORDS = frozenset({
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC", "NULLS",
    "FIRST", "LAST", "LIMIT", "OFFSET", "NULL", "TRUE", "FALSE", "WITH", "FOR", "GROUP", "HAVING",
    "INCLUDES", "EXCLUDES", "USING", "TYPEOF", "END", "ROLLUP", "CUBE",
})
DATE_LITERALS = frozenset({
    "TODAY", "YESTERDAY", "TOMORROW", "THIS_WEEK", "LAST_WEEK", "NEXT_WEEK", "THIS_MONTH", "LAST_MONTH",
    "NEXT_MONTH", "THIS_YEAR", "LAST_YEAR", "NEXT_YEAR", "LAST_90_DAYS", "NEXT_90_DAYS",
})
DATE_N_LITERALS = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO", "LAST_N_WEEKS", "NEXT_N_WEEKS",
                             "LAST_N_MONTHS", "NEXT_N_MONTHS"})
_TYPE_WORD = {"date": "date", "datetime": "dateTime", "boolean": "boolean", "double": "double",
              "currency": "double", "percent": "double", "int": "int"}
_STRINGISH = sch.STRING_TYPES


@dataclass
class QueryResult:
    """A complete query result in REST form (the REST layer pages it)."""

    total_size: int
    records: list[dict[str, Any]]
    done: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"totalSize": self.total_size, "done": self.done, "records": self.records}


# ---------------------------------------------------------------------------------------------- lexer


@dataclass(frozen=True)
class Token:
    kind: str  # IDENT STRING NUMBER DATE DATETIME OP LPAREN RPAREN COMMA DOT COLON EOF
    value: str
    pos: int

    @property
    def upper(self) -> str:
        return self.value.upper()


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<number>\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<dot>\.)
  | (?P<colon>:)
  | (?P<sign>[-+])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


class _Source:
    """The query text, for Salesforce-style error positions."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, code: str, pos: int, message: str) -> ApiError:
        row = self.text.count("\n", 0, pos) + 1
        line_start = self.text.rfind("\n", 0, pos) + 1
        line_end = self.text.find("\n", pos)
        line = self.text[line_start: line_end if line_end >= 0 else len(self.text)]
        col = pos - line_start + 1
        # Salesforce echoes the line from at most 32 characters before the error (seen in real responses)
        start = max(0, col - 1 - _ECHO_BEFORE)
        return ApiError(400, code, f"\n{line[start:]}\n{' ' * (col - 1 - start)}^\nERROR at Row:{row}:Column:{col}"
                                   f"\n{message}")


def tokenize(src: _Source) -> list[Token]:
    text = src.text
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if ch == "'":
            start = pos
            value, pos = _read_string(src, pos)
            tokens.append(Token("STRING", value, start))
            continue
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise src.error("MALFORMED_QUERY", pos, f"unexpected token: '{ch}'")
        kind = m.lastgroup or ""
        if kind == "sign":
            nxt = _TOKEN_RE.match(text, m.end())
            if nxt is None or nxt.lastgroup != "number":
                raise src.error("MALFORMED_QUERY", pos, f"unexpected token: '{ch}'")
            tokens.append(Token("NUMBER", ch + nxt.group(), pos))
            pos = nxt.end()
            continue
        if kind != "ws":
            tokens.append(Token(kind.upper(), m.group(), pos))
        pos = m.end()
    tokens.append(Token("EOF", "<EOF>", len(text)))
    return tokens


def _read_string(src: _Source, start: int) -> tuple[str, int]:
    """A quoted literal; the value keeps `\\%` and `\\_` escaped for LIKE, decodes the rest."""
    text = src.text
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        ch = text[pos]
        if ch == "'":
            return "".join(out), pos + 1
        if ch == "\\":
            nxt = text[pos + 1: pos + 2]
            if nxt in _ESCAPES:
                out.append("\\" + nxt if nxt == "\\" else _ESCAPES[nxt])
                pos += 2
                continue
            if nxt in ("%", "_"):
                out.append("\\" + nxt)
                pos += 2
                continue
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[pos + 2: pos + 6]):
                out.append(chr(int(text[pos + 2: pos + 6], 16)))
                pos += 6
                continue
            literal = text[start: text.find("'", pos + 2) + 1 if text.find("'", pos + 2) >= 0 else len(text)]
            raise src.error("MALFORMED_QUERY", start,
                            f"Invalid string literal '{literal}'. Illegal character sequence '\\{nxt}' in "
                            "string literal.")
        out.append(ch)
        pos += 1
    raise src.error("MALFORMED_QUERY", len(text), "unexpected token: '<EOF>'")


def _plain(value: str) -> str:
    """A string literal for `=`/IN: LIKE escapes become the characters themselves."""
    return value.replace("\\%", "%").replace("\\_", "_").replace("\\\\", "\\")


# ---------------------------------------------------------------------------------------------- AST


@dataclass
class FieldPath:
    names: list[str]
    pos: int
    # filled by the resolver: reference fields walked, then the final field
    steps: list[FieldSpec] = field(default_factory=list)
    final: FieldSpec | None = None
    final_objects: tuple[ObjectSpec, ...] = ()  # the object(s) the final field lives on
    polymorphic_type: bool = False  # `LinkedEntity.Type`


@dataclass
class Literal:
    kind: str  # string number null boolean date datetime dateliteral
    value: Any
    pos: int
    raw: str = ""


@dataclass
class Comparison:
    path: FieldPath
    op: str  # = != < > <= >= IN NOT IN LIKE
    value: Literal | list[Literal] | Query
    pos: int


@dataclass
class BoolOp:
    op: str  # AND OR
    items: list[Condition]


@dataclass
class NotOp:
    item: Condition


Condition = Comparison | BoolOp | NotOp


@dataclass
class OrderItem:
    path: FieldPath
    descending: bool = False
    nulls_last: bool = False


@dataclass
class CountItem:
    path: FieldPath | None
    pos: int
    alias: str | None = None


@dataclass
class SubQuery:
    query: Query
    pos: int


SelectItem = FieldPath | SubQuery | CountItem


@dataclass
class Query:
    select: list[SelectItem]
    sobject: str
    sobject_pos: int
    where: Condition | None = None
    order: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None
    obj: ObjectSpec | None = None
    child_field: str | None = None  # for subqueries: the child's field pointing at the parent
    relationship_name: str | None = None


# ---------------------------------------------------------------------------------------------- parser


class Parser:
    def __init__(self, src: _Source) -> None:
        self.src = src
        self.tokens = tokenize(src)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def unexpected(self, tok: Token | None = None) -> ApiError:
        tok = tok or self.tok
        return self.src.error("MALFORMED_QUERY", tok.pos, f"unexpected token: '{tok.value}'")

    def is_kw(self, *words: str) -> bool:
        return self.tok.kind == "IDENT" and self.tok.upper in words

    def expect_kw(self, word: str) -> Token:
        if not self.is_kw(word):
            raise self.unexpected()
        return self.advance()

    def expect(self, kind: str) -> Token:
        if self.tok.kind != kind:
            raise self.unexpected()
        return self.advance()

    def parse(self) -> Query:
        query = self.query(nested=False)
        if self.tok.kind != "EOF":
            raise self.unexpected()
        return query

    def query(self, *, nested: bool) -> Query:
        self.expect_kw("SELECT")
        select = self.select_list(nested)
        self.expect_kw("FROM")
        obj_tok = self.tok
        if obj_tok.kind != "IDENT" or obj_tok.upper in KEYWORDS:
            raise self.unexpected()
        self.advance()
        query = Query(select=select, sobject=obj_tok.value, sobject_pos=obj_tok.pos)
        if self.tok.kind == "IDENT" and self.tok.upper not in KEYWORDS:
            self.advance()  # alias: accepted and ignored
        if self.is_kw("USING"):
            raise self.unexpected()
        if self.is_kw("WHERE"):
            self.advance()
            query.where = self.condition()
        if self.is_kw("WITH"):
            self.advance()
            if not self.is_kw("SECURITY_ENFORCED", "USER_MODE", "SYSTEM_MODE"):
                raise self.unexpected()
            self.advance()
        if self.is_kw("GROUP"):
            raise self.src.error("MALFORMED_QUERY", self.tok.pos,
                                 "GROUP BY is not supported by the sfsign emulator")
        if self.is_kw("ORDER"):
            self.advance()
            self.expect_kw("BY")
            query.order = self.order_list()
        if self.is_kw("LIMIT"):
            self.advance()
            query.limit = self.integer()
        if self.is_kw("OFFSET"):
            self.advance()
            tok = self.tok
            query.offset = self.integer()
            if query.offset > MAX_OFFSET:
                raise self.src.error("NUMBER_OUTSIDE_VALID_RANGE", tok.pos,
                                     f"Maximum SOQL offset allowed is {MAX_OFFSET}")
        if self.is_kw("FOR"):
            self.advance()
            if not self.is_kw("VIEW", "REFERENCE", "UPDATE"):
                raise self.unexpected()
            self.advance()
        if nested and self.tok.kind != "RPAREN":
            raise self.unexpected()
        return query

    def integer(self) -> int:
        tok = self.tok
        if tok.kind != "NUMBER" or not tok.value.isdigit():
            raise self.unexpected()
        self.advance()
        return int(tok.value)

    def select_list(self, nested: bool) -> list[SelectItem]:
        items: list[SelectItem] = []
        while True:
            tok = self.tok
            if tok.kind == "LPAREN":
                if nested:
                    raise self.unexpected()
                self.advance()
                sub = self.query(nested=True)
                self.expect("RPAREN")
                items.append(SubQuery(sub, tok.pos))
            elif self.is_kw("COUNT") and self.tokens[self.i + 1].kind == "LPAREN":
                self.advance()
                self.advance()
                path = None if self.tok.kind == "RPAREN" else self.field_path()
                self.expect("RPAREN")
                alias = None
                if self.tok.kind == "IDENT" and self.tok.upper not in KEYWORDS:
                    alias = self.advance().value
                items.append(CountItem(path, tok.pos, alias))
            else:
                items.append(self.field_path())
            if self.tok.kind != "COMMA":
                return items
            self.advance()

    def field_path(self) -> FieldPath:
        tok = self.tok
        if tok.kind != "IDENT" or tok.upper in KEYWORDS:
            raise self.unexpected()
        names = [self.advance().value]
        while self.tok.kind == "DOT":
            self.advance()
            part = self.tok
            if part.kind != "IDENT":
                raise self.unexpected()
            names.append(self.advance().value)
        return FieldPath(names, tok.pos)

    def order_list(self) -> list[OrderItem]:
        items = []
        while True:
            item = OrderItem(self.field_path())
            if self.is_kw("ASC", "DESC"):
                item.descending = self.advance().upper == "DESC"
            if self.is_kw("NULLS"):
                self.advance()
                if not self.is_kw("FIRST", "LAST"):
                    raise self.unexpected()
                item.nulls_last = self.advance().upper == "LAST"
            items.append(item)
            if self.tok.kind != "COMMA":
                return items
            self.advance()

    def condition(self) -> Condition:
        """`a AND b AND c` or `a OR b OR c`; mixing them needs parentheses, as in Salesforce."""
        first = self.unary()
        if not self.is_kw("AND", "OR"):
            return first
        op = self.tok.upper
        items = [first]
        while self.is_kw("AND", "OR"):
            if self.tok.upper != op:
                raise self.unexpected()
            self.advance()
            items.append(self.unary())
        return BoolOp(op, items)

    def unary(self) -> Condition:
        if self.is_kw("NOT"):
            self.advance()
            return NotOp(self.unary())
        if self.tok.kind == "LPAREN":
            self.advance()
            cond = self.condition()
            self.expect("RPAREN")
            return cond
        return self.comparison()

    def comparison(self) -> Comparison:
        path = self.field_path()
        tok = self.tok
        if tok.kind == "OP":
            self.advance()
            op = "!=" if tok.value == "<>" else tok.value
            return Comparison(path, op, self.literal(), tok.pos)
        if self.is_kw("LIKE"):
            self.advance()
            return Comparison(path, "LIKE", self.literal(), tok.pos)
        if self.is_kw("NOT"):
            self.advance()
            self.expect_kw("IN")
            return Comparison(path, "NOT IN", self.in_values(), tok.pos)
        if self.is_kw("IN"):
            self.advance()
            return Comparison(path, "IN", self.in_values(), tok.pos)
        if self.is_kw("INCLUDES", "EXCLUDES"):
            raise self.src.error("MALFORMED_QUERY", tok.pos, f"{tok.upper} is not supported by the sfsign emulator")
        raise self.unexpected()

    def in_values(self) -> list[Literal] | Query:
        self.expect("LPAREN")
        if self.is_kw("SELECT"):
            sub = self.query(nested=True)
            self.expect("RPAREN")
            return sub
        values = [self.literal()]
        while self.tok.kind == "COMMA":
            self.advance()
            values.append(self.literal())
        self.expect("RPAREN")
        return values

    def literal(self) -> Literal:
        tok = self.tok
        if tok.kind == "STRING":
            self.advance()
            return Literal("string", tok.value, tok.pos)
        if tok.kind == "NUMBER":
            self.advance()
            return Literal("number", float(tok.value), tok.pos, tok.value)
        if tok.kind == "DATE":
            self.advance()
            value = sch.parse_date(tok.value)
            if value is None:
                raise self.src.error("MALFORMED_QUERY", tok.pos, f"line 1:{tok.pos} no viable alternative at "
                                     f"character '{tok.value}'")
            return Literal("date", value, tok.pos, tok.value)
        if tok.kind == "DATETIME":
            self.advance()
            value_dt = sch.parse_datetime(tok.value)
            if value_dt is None:
                raise self.unexpected(tok)
            return Literal("datetime", value_dt, tok.pos, tok.value)
        if tok.kind == "IDENT":
            word = tok.upper
            if word == "NULL":
                self.advance()
                return Literal("null", None, tok.pos, tok.value)
            if word in ("TRUE", "FALSE"):
                self.advance()
                return Literal("boolean", word == "TRUE", tok.pos, tok.value)
            if word in DATE_LITERALS:
                self.advance()
                return Literal("dateliteral", (word, 0), tok.pos, tok.value)
            if word in DATE_N_LITERALS:
                self.advance()
                self.expect("COLON")
                n_tok = self.tok
                if n_tok.kind != "NUMBER" or not n_tok.value.isdigit():
                    raise self.unexpected()
                self.advance()
                return Literal("dateliteral", (word, int(n_tok.value)), tok.pos, f"{tok.value}:{n_tok.value}")
        raise self.unexpected()


def parse(soql: str) -> Query:
    """Parse SOQL text (no schema checks)."""
    return Parser(_Source(soql)).parse()


# ---------------------------------------------------------------------------------------------- resolver


class Resolver:
    """Binds names to the schema (case-insensitively) and type-checks filters."""

    def __init__(self, store: OrgStore, src: _Source, access: Access | None = None) -> None:
        self.store = store
        self.schema = store.schema
        self.src = src
        self.access = access  # None: sees everything (a System Administrator, or Salesforce itself)

    def _visible(self, obj: ObjectSpec, spec: FieldSpec | None = None) -> bool:
        if self.access is None:
            return True
        return self.access.can_read_field(obj, spec) if spec is not None else self.access.can_read_object(obj)

    def query(self, query: Query, parent: ObjectSpec | None = None) -> None:
        if parent is None:
            obj = self.schema.get(query.sobject)
            if obj is None or not obj.queryable or not self._visible(obj):
                raise self.src.error("INVALID_TYPE", query.sobject_pos,
                                     f"sObject type '{query.sobject}' is not supported. {_CUSTOM_OBJECT_HINT}")
        else:
            rel = parent.child_relationship(query.sobject)
            if rel is None or not self._visible(self.schema.objects[rel.child_sobject]):
                raise self.src.error("INVALID_TYPE", query.sobject_pos,
                                     f"Didn't understand relationship '{query.sobject}' in FROM part of query "
                                     f"call. {_CUSTOM_REL_HINT}")
            obj = self.schema.objects[rel.child_sobject]
            query.child_field = rel.field
            query.relationship_name = rel.relationship_name
        query.obj = obj
        seen: set[str] = set()
        counts = [item for item in query.select if isinstance(item, CountItem)]
        if counts and len(query.select) > 1 and any(c.path is None for c in counts):
            raise self.src.error("MALFORMED_QUERY", counts[0].pos,
                                 "COUNT() and other fields can not be selected together")
        for item in query.select:
            if isinstance(item, FieldPath):
                self.path(obj, item, query)
                key = ".".join(n.lower() for n in self._canonical(item))
                if key in seen:
                    raise self.src.error("MALFORMED_QUERY", item.pos,
                                         f"duplicate field selected: {'.'.join(self._canonical(item))}")
                seen.add(key)
            elif isinstance(item, SubQuery):
                if parent is not None:
                    raise self.src.error("MALFORMED_QUERY", item.pos, "unexpected token: '('")
                self.query(item.query, obj)
            elif item.path is not None:
                self.path(obj, item.path, query)
        if query.where is not None:
            self.condition(obj, query.where, query)
        for order in query.order:
            self.path(obj, order.path, query)
            assert order.path.final is not None
            if not order.path.final.sortable:
                raise self.src.error("INVALID_FIELD", order.path.pos,
                                     f"field '{order.path.final.name}' can not be sorted in a query call")
        if parent is None and obj.name == "ContentDocumentLink" and not self._cdl_filtered(query.where):
            raise ApiError(400, "MALFORMED_QUERY", CDL_RESTRICTION)

    @staticmethod
    def _canonical(path: FieldPath) -> list[str]:
        names = [s.relationship_name or s.name for s in path.steps]
        if path.polymorphic_type:
            names.append("Type")
        elif path.final is not None:
            names.append(path.final.name)
        return names

    def path(self, obj: ObjectSpec, path: FieldPath, query: Query) -> None:
        names = list(path.names)
        if len(names) > 1 and names[0].lower() in (query.sobject.lower(), obj.name.lower()) \
                and obj.relationship(names[0]) is None:
            names = names[1:]  # `SELECT Opportunity.Name FROM Opportunity`
        current: tuple[ObjectSpec, ...] = (obj,)
        for rel_name in names[:-1]:
            ref = None
            for candidate in current:
                ref = candidate.relationship(rel_name)
                if ref is not None and not self._visible(candidate, ref):
                    ref = None  # a lookup the user cannot see cannot be followed either
                if ref is not None:
                    break
            if ref is None:
                raise self.src.error("INVALID_FIELD", path.pos,
                                     f"Didn't understand relationship '{rel_name}' in field path. {_CUSTOM_REL_HINT}")
            path.steps.append(ref)
            current = tuple(self.schema.objects[t] for t in ref.reference_to if t in self.schema.objects)
        last = names[-1]
        if path.steps and len(path.steps[-1].reference_to) > 1 and last.lower() == "type":
            path.polymorphic_type = True
            path.final = sch.FieldSpec(name="Type", type="string", label="Type", length=255)
            path.final_objects = current
            return
        owners = tuple(o for o in current if o.field(last) is not None and self._visible(o, o.field(last)))
        if not owners:
            entity = current[0].name if len(current) == 1 else "Name"
            raise self.src.error("INVALID_FIELD", path.pos,
                                 f"No such column '{last}' on entity '{entity}'. {_CUSTOM_FIELD_HINT}")
        path.final = owners[0].field(last)
        path.final_objects = owners

    def condition(self, obj: ObjectSpec, cond: Condition, query: Query) -> None:
        if isinstance(cond, BoolOp):
            for item in cond.items:
                self.condition(obj, item, query)
            return
        if isinstance(cond, NotOp):
            self.condition(obj, cond.item, query)
            return
        self.path(obj, cond.path, query)
        spec = cond.path.final
        assert spec is not None
        if not spec.filterable:
            raise self.src.error("INVALID_FIELD", cond.path.pos,
                                 f"field '{spec.name}' can not be filtered in a query call")
        if isinstance(cond.value, Query):
            self.query(cond.value)
            if len(cond.value.select) != 1 or not isinstance(cond.value.select[0], FieldPath):
                raise self.src.error("MALFORMED_QUERY", cond.value.sobject_pos,
                                     "The selected field in a semi join subquery must be a single Id field")
            return
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        for lit in values:
            self.check_literal(spec, lit, cond.op, cond.path.pos)

    def check_literal(self, spec: FieldSpec, lit: Literal, op: str, pos: int) -> None:
        """Salesforce reports a literal of the wrong type at the column of the field it is compared with."""
        if lit.kind == "null":
            return
        t = spec.type
        if op == "LIKE" and (lit.kind != "string" or t not in _STRINGISH or t in ("id", "reference")):
            raise self.src.error("INVALID_FIELD", pos,
                                 f"invalid operator on {'id' if t in ('id', 'reference') else t} field: LIKE")
        if t in _STRINGISH:
            if lit.kind != "string":
                raise self.src.error("INVALID_FIELD", pos,
                                     f"value of filter criterion for field '{spec.name}' must be of type string "
                                     "and should be enclosed in quotes")
            if t in ("id", "reference") and normalize_id(_plain(lit.value)) is None:
                raise self.src.error("INVALID_QUERY_FILTER_OPERATOR", pos, f"invalid ID field: {lit.value}")
            return
        expected = {"date": ("date", "dateliteral"), "datetime": ("datetime", "dateliteral"),
                    "boolean": ("boolean",)}.get(t, ("number",))
        if lit.kind not in expected:
            raise self.src.error("INVALID_FIELD", pos,
                                 f"value of filter criterion for field '{spec.name}' must be of type "
                                 f"{_TYPE_WORD.get(t, t)} and should not be enclosed in quotes")

    @staticmethod
    def _cdl_filtered(where: Condition | None) -> bool:
        conjuncts: list[Condition] = []
        if isinstance(where, BoolOp) and where.op == "AND":
            conjuncts = where.items
        elif where is not None:
            conjuncts = [where]
        for cond in conjuncts:
            if isinstance(cond, Comparison) and not cond.path.steps and cond.path.final is not None \
                    and cond.path.final.name in ("ContentDocumentId", "LinkedEntityId") \
                    and (cond.op == "=" or (cond.op == "IN")):
                return True
        return False


# ---------------------------------------------------------------------------------------------- evaluator


def _date_range(literal: tuple[str, int], today: dt.date) -> tuple[dt.date, dt.date]:
    """[start, end) of a relative date literal (weeks start on Sunday, as in the en_US locale)."""
    word, n = literal
    day = dt.timedelta(days=1)

    def month_start(d: dt.date, shift: int) -> dt.date:
        m = d.month - 1 + shift
        return dt.date(d.year + m // 12, m % 12 + 1, 1)

    week_start = today - dt.timedelta(days=(today.weekday() + 1) % 7)
    table: dict[str, tuple[dt.date, dt.date]] = {
        "TODAY": (today, today + day),
        "YESTERDAY": (today - day, today),
        "TOMORROW": (today + day, today + 2 * day),
        "THIS_WEEK": (week_start, week_start + 7 * day),
        "LAST_WEEK": (week_start - 7 * day, week_start),
        "NEXT_WEEK": (week_start + 7 * day, week_start + 14 * day),
        "THIS_MONTH": (month_start(today, 0), month_start(today, 1)),
        "LAST_MONTH": (month_start(today, -1), month_start(today, 0)),
        "NEXT_MONTH": (month_start(today, 1), month_start(today, 2)),
        "THIS_YEAR": (dt.date(today.year, 1, 1), dt.date(today.year + 1, 1, 1)),
        "LAST_YEAR": (dt.date(today.year - 1, 1, 1), dt.date(today.year, 1, 1)),
        "NEXT_YEAR": (dt.date(today.year + 1, 1, 1), dt.date(today.year + 2, 1, 1)),
        "LAST_90_DAYS": (today - 90 * day, today + day),
        "NEXT_90_DAYS": (today + day, today + 91 * day),
        "LAST_N_DAYS": (today - n * day, today + day),
        "NEXT_N_DAYS": (today + day, today + (n + 1) * day),
        "N_DAYS_AGO": (today - n * day, today - (n - 1) * day),
        "LAST_N_WEEKS": (week_start - 7 * n * day, week_start),
        "NEXT_N_WEEKS": (week_start + 7 * day, week_start + 7 * (n + 1) * day),
        "LAST_N_MONTHS": (month_start(today, -n), month_start(today, 0)),
        "NEXT_N_MONTHS": (month_start(today, 1), month_start(today, n + 1)),
    }
    return table[word]


class Evaluator:
    def __init__(self, store: OrgStore, version: str, include_deleted: bool) -> None:
        self.store = store
        self.version = version
        self.include_deleted = include_deleted
        self.today = store.now().date()
        self._in_cache: dict[int, tuple[set[Any], bool] | None] = {}

    # -- value access

    def resolve(self, rec: dict[str, Any] | None, path: FieldPath) -> tuple[dict[str, Any] | None, Any]:
        """(record holding the final field, its value) after walking the parent references."""
        for step in path.steps:
            if rec is None:
                return None, None
            target = rec.get(step.name)
            rec = self.store.record(target) if target else None
            if rec is not None and rec.get("IsDeleted"):
                rec = None
        if rec is None:
            return None, None
        if path.polymorphic_type:
            return rec, rec["_type"]
        assert path.final is not None
        return rec, rec.get(path.final.name)

    def value(self, rec: dict[str, Any], path: FieldPath) -> Any:
        return self.resolve(rec, path)[1]

    # -- filtering

    def matches(self, rec: dict[str, Any], cond: Condition) -> bool:
        if isinstance(cond, BoolOp):
            if cond.op == "AND":
                return all(self.matches(rec, c) for c in cond.items)
            return any(self.matches(rec, c) for c in cond.items)
        if isinstance(cond, NotOp):
            return not self.matches(rec, cond.item)
        spec = cond.path.final
        assert spec is not None
        value = self.value(rec, cond.path)
        if isinstance(cond.value, Query):
            wanted = {self._norm(spec, v) for v in self.semi_join(cond.value)}
            hit = self._norm(spec, value) in wanted if value is not None else False
            return hit if cond.op == "IN" else not hit
        if cond.op in ("IN", "NOT IN"):
            assert isinstance(cond.value, list)
            wanted_set = self._in_set(spec, cond)
            if wanted_set is not None:
                values, has_null = wanted_set
                hit = has_null if value is None else self._norm(spec, value) in values
            else:
                hit = any(self.compare(spec, value, "=", lit) for lit in cond.value)
            return hit if cond.op == "IN" else not hit
        assert isinstance(cond.value, Literal)
        if cond.op == "LIKE":
            if value is None:
                return False
            return bool(_like_regex(cond.value.value).match(str(value)))
        return self.compare(spec, value, cond.op, cond.value)

    def _in_set(self, spec: FieldSpec, cond: Comparison) -> tuple[set[Any], bool] | None:
        """The normalised literals of an IN list, computed once per query (None: compare one by one)."""
        key = id(cond)
        if key not in self._in_cache:
            literals = cond.value if isinstance(cond.value, list) else []
            if any(lit.kind == "dateliteral" for lit in literals):
                self._in_cache[key] = None
            else:
                values = {self._norm(spec, _plain(lit.value) if lit.kind == "string" else lit.value)
                          for lit in literals if lit.kind != "null"}
                self._in_cache[key] = (values, any(lit.kind == "null" for lit in literals))
        return self._in_cache[key]

    def semi_join(self, query: Query) -> list[Any]:
        result = run(self, query)
        path = query.select[0]
        assert isinstance(path, FieldPath)
        return [self.value(r, path) for r in result]

    @staticmethod
    def _norm(spec: FieldSpec, value: Any) -> Any:
        if isinstance(value, str):
            if spec.type in ("id", "reference"):
                return normalize_id(value) or value
            return value.lower()
        return value

    def compare(self, spec: FieldSpec, value: Any, op: str, lit: Literal) -> bool:
        if lit.kind == "null":
            if op == "=":
                return value is None
            if op == "!=":
                return value is not None
            return False
        if lit.kind == "dateliteral":
            start, end = _date_range(lit.value, self.today)
            if value is None:
                return op == "!="
            day = value.astimezone(dt.UTC).date() if isinstance(value, dt.datetime) else value
            return {"=": start <= day < end, "!=": not start <= day < end, "<": day < start, "<=": day < end,
                    ">": day >= end, ">=": day >= start}[op]
        target = _plain(lit.value) if lit.kind == "string" else lit.value
        if value is None:
            return op == "!="
        a, b = self._norm(spec, value), self._norm(spec, target)
        if spec.type in ("id", "reference"):
            b = normalize_id(target) or target
        try:
            return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        except TypeError:
            return False

    # -- ordering and rendering

    def sort(self, rows: list[dict[str, Any]], order: list[OrderItem]) -> list[dict[str, Any]]:
        for item in reversed(order):
            spec = item.path.final
            assert spec is not None

            def key(rec: dict[str, Any], spec: FieldSpec = spec, item: OrderItem = item) -> Any:
                value = self.value(rec, item.path)
                if isinstance(value, str):
                    value = value.lower()
                return value

            present = [r for r in rows if key(r) is not None]
            absent = [r for r in rows if key(r) is None]
            present.sort(key=key, reverse=item.descending)
            rows = present + absent if item.nulls_last else absent + present
        return rows

    def render(self, rec: dict[str, Any], query: Query) -> dict[str, Any]:
        obj = query.obj
        assert obj is not None
        out: dict[str, Any] = {"attributes": self.store.attributes(obj, rec["Id"], self.version)}
        for item in query.select:
            if isinstance(item, FieldPath):
                self.render_path(out, rec, obj, item, 0)
            elif isinstance(item, SubQuery):
                sub = item.query
                assert sub.obj is not None and sub.child_field is not None
                children = run(self, sub, parent_id=rec["Id"])
                key = sub.relationship_name or sub.sobject
                out[key] = ({"totalSize": len(children), "done": True,
                             "records": [self.render(c, sub) for c in children]} if children else None)
        return out

    def render_path(self, out: dict[str, Any], rec: dict[str, Any], obj: ObjectSpec, path: FieldPath,
                    depth: int) -> None:
        if depth == len(path.steps):
            if path.polymorphic_type:
                out["Type"] = rec["_type"]
                return
            spec = obj.field(path.final.name) if path.final else None
            if spec is None:  # polymorphic parent of another type: the field does not apply
                assert path.final is not None
                out[path.final.name] = None
                return
            out[spec.name] = sch.render_rest(obj, spec, rec, self.version)
            return
        step = path.steps[depth]
        rel = step.relationship_name or step.name
        target_id = rec.get(step.name)
        parent = self.store.record(target_id) if target_id else None
        if parent is None or parent.get("IsDeleted"):
            if rel not in out:
                out[rel] = None
            return
        parent_obj = self.store.schema.objects[parent["_type"]]
        nested = out.get(rel)
        if nested is None:
            nested = {"attributes": self.store.attributes(parent_obj, parent["Id"], self.version)}
            out[rel] = nested
        self.render_path(nested, parent, parent_obj, path, depth + 1)


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE | re.DOTALL)


def _candidates(ev: Evaluator, query: Query) -> list[dict[str, Any]] | None:
    """Records found through an id or an indexed reference in a top-level `=`/IN filter (None: scan)."""
    assert query.obj is not None
    where = query.where
    conjuncts = where.items if isinstance(where, BoolOp) and where.op == "AND" else [where] if where else []
    for cond in conjuncts:
        if not isinstance(cond, Comparison) or cond.path.steps or cond.op not in ("=", "IN") \
                or cond.path.final is None or isinstance(cond.value, Query):
            continue
        literals = cond.value if isinstance(cond.value, list) else [cond.value]
        if any(lit.kind != "string" for lit in literals):
            continue
        name = cond.path.final.name
        if name == "Id":
            ids = list(dict.fromkeys(normalize_id(_plain(lit.value)) or "" for lit in literals))
            found = [ev.store.record(i) for i in ids if i]
            return [r for r in found if r is not None and r["_type"] == query.obj.name
                    and (ev.include_deleted or not r.get("IsDeleted"))]
        if ev.store.is_indexed(query.obj.name, name):
            hits: dict[str, dict[str, Any]] = {}
            for lit in literals:
                for r in ev.store.indexed(query.obj.name, name, _plain(lit.value), ev.include_deleted):
                    hits[r["Id"]] = r
            return list(hits.values())
    return None


def run(ev: Evaluator, query: Query, parent_id: str | None = None) -> list[dict[str, Any]]:
    """The matching stored records of one (sub)query, filtered, ordered and cut."""
    assert query.obj is not None
    rows: Iterable[dict[str, Any]]
    if parent_id is not None:
        assert query.child_field is not None
        rows = ev.store.children(query.obj.name, query.child_field, parent_id, ev.include_deleted)
    else:
        found = _candidates(ev, query)
        rows = found if found is not None else ev.store.iter_records(query.obj.name, ev.include_deleted)
    where: Callable[[dict[str, Any]], bool] = (lambda r: True) if query.where is None else (
        lambda r: ev.matches(r, query.where))  # type: ignore[arg-type]
    selected = [r for r in rows if where(r)]
    if query.order:
        selected = ev.sort(selected, query.order)
    if query.offset:
        selected = selected[query.offset:]
    if query.limit is not None:
        selected = selected[: query.limit]
    return selected


def execute_query(store: OrgStore, soql: str, *, include_deleted: bool = False,
                  api_version: str = "68.0", access: Access | None = None) -> QueryResult:
    """Parse, resolve and run SOQL against the store, as a user with `access` (None: everything)."""
    src = _Source(soql)
    query = Parser(src).parse()
    Resolver(store, src, access).query(query)
    ev = Evaluator(store, api_version, include_deleted)
    counts = [item for item in query.select if isinstance(item, CountItem)]
    if counts:
        rows = run(ev, Query(select=[], sobject=query.sobject, sobject_pos=query.sobject_pos, where=query.where,
                             obj=query.obj))
        if counts[0].path is None:
            return QueryResult(total_size=len(rows), records=[])
        record: dict[str, Any] = {"attributes": {"type": "AggregateResult"}}
        for n, item in enumerate(counts):
            values = [ev.value(r, item.path) for r in rows] if item.path else []
            record[item.alias or f"expr{n}"] = sum(v is not None for v in values)
        return QueryResult(total_size=1, records=[record])
    rows = run(ev, query)
    return QueryResult(total_size=len(rows), records=[ev.render(r, query) for r in rows])
