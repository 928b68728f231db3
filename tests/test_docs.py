"""Every fenced code block of every ``docs/*.md`` page is executed here.

Each page is one test: its blocks run in page order against a fresh migrated database (fixture
``db``: token secret set, test logins that are members of tracefence_app and tracefence_service).
Blocks of one page share state; pages share nothing (cluster-wide objects a page creates are
dropped after it: new roles the page names, new databases a page name holds). A failure names
the page and line.
docs/README.md states the same convention for writers; keep the two in step.

Directive: an HTML comment on the last non-blank line before a fence (or a table), clauses
separated by ``;``::

    <!-- as: app request alice -->     sql: run as this role, inside a request of `alice`
    <!-- as: service; error: 22023 --> sql: the block must stop with this SQLSTATE
    <!-- exit: 1 -->                   console: exit status of the block's last command
    <!-- not run: reason -->           any block: shown, never executed (reason required)
    <!-- result -->                    before a markdown table: the previous sql block's result

Info strings (the first word after the fence); anything else fails unless marked ``not run``:

``python``
    Executed in one namespace per page. Predefined: ``app_dsn`` (a login that is a member of
    tracefence_app), ``service_dsn`` (member of tracefence_service), ``dba_dsn`` (superuser),
    ``SECRET`` (bytes: the token secret already set with iam.set_token_secret). What it prints
    is its output. The working directory is a temporary directory of the page.
``sql``
    Needs ``as: ROLE``: ``app``, ``service``, ``dba`` (superuser) or ``owner`` (superuser
    session after ``SET ROLE tracefence_owner``). One session per role and page, autocommit,
    so every statement commits unless the block says ``BEGIN``. ``as: app request NAME`` wraps
    the block in ``BEGIN; SELECT iam.begin_request(<credential of NAME>); ... COMMIT;`` (what
    Fence.request does): NAME is a page name holding a user id (a user token signed with SECRET
    is made), an ``api.ApiKey`` (its secret) or a credential string. Statements are split and
    sent one by one as psql does; ``:'name'`` / ``:"name"`` are replaced by a page name as a
    quoted literal / identifier (psql variable syntax); ``\\gset [prefix]`` ends a query whose
    one row is stored in page names (typed values: uuid, str, ...). A block stops at its first
    error (psql ON_ERROR_STOP) and an open transaction is rolled back. Output is what ``psql
    -q`` prints: aligned tables, then ``ERROR:  message`` / ``DETAIL:`` / ``HINT:`` lines.
``console``
    Lines ``$ tracefence ...`` (a trailing ``\\`` continues a command) run the real CLI in bash,
    with ``PG*`` variables naming the page's database as a superuser, every page name whose
    value is a str, uuid or int exported as an environment variable (``"$project"``), and
    ``COLUMNS=160``. The lines after a command are its expected stdout+stderr (none: not
    compared). Every command must exit 0, the last one ``exit: N`` when given.
``text``
    The expected output of the previous fenced block.

Comparisons ignore trailing whitespace and surrounding blank lines, count a run of blanks or of
dashes as one (column widths need not match), and ``...`` matches anything (doctest ELLIPSIS).
A ``<!-- result -->`` table must equal the last result set of the previous sql block: header =
column names, then the rows, cells compared as text with backticks and ``\\|`` escapes removed
(NULL is an empty cell).
"""

from __future__ import annotations

import contextlib
import doctest
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import pq

from tests.world import Database
from tracefence import api, user_token

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LANGUAGES = {"python", "sql", "console", "text"}
SQL_ROLES = {"app", "service", "owner", "dba"}
NUMERIC_OIDS = {20, 21, 23, 26, 700, 701, 790, 1700}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DocsFailure(AssertionError):
    """A block did not do what its page says; the message starts with page:line."""


def fail(page: Path, line: int, message: str) -> DocsFailure:
    return DocsFailure(f"{_rel(page)}:{line}: {message}")


def _rel(page: Path) -> str:
    try:
        return str(page.relative_to(DOCS.parent))
    except ValueError:
        return str(page)


# --- parsing -------------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence (or of the table's header)
    lang: str  # info string's first word, or "table" for a result table
    text: str
    directive: dict[str, str] = field(default_factory=dict)
    rows: list[list[str]] = field(default_factory=list)  # table blocks: header, then body


FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
DIRECTIVE = re.compile(r"^\s*<!--(?P<body>.*)-->\s*$")
DIRECTIVE_KEYS = {"as", "error", "exit", "not run", "result"}


def _directive(page: Path, lines: list[str], index: int) -> dict[str, str]:
    """The directive on the last non-blank line before lines[index], if any."""
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return {}
    match = DIRECTIVE.match(lines[j])
    if not match:
        return {}
    clauses: dict[str, str] = {}
    for clause in match["body"].split(";"):
        key, _, value = clause.partition(":")
        key, value = key.strip(), value.strip()
        if key not in DIRECTIVE_KEYS:
            raise fail(page, j + 1, f"unknown directive {clause.strip()!r} (known: "
                       f"{', '.join(sorted(DIRECTIVE_KEYS))})")
        clauses[key] = value
    return clauses


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    cells = re.split(r"(?<!\\)\|", body)
    return [c.replace("\\|", "|").replace("`", "").strip() for c in cells]


def parse_page(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match:
            indent, fence = len(match["indent"]), match["fence"]
            info = match["info"].strip()
            directive = _directive(page, lines, i)
            body: list[str] = []
            j = i + 1
            closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            while j < len(lines) and not closing.match(lines[j]):
                text = lines[j]
                body.append(text[indent:] if text[:indent].strip() == "" else text.lstrip())
                j += 1
            if j == len(lines):
                raise fail(page, i + 1, "code fence is never closed")
            lang = info.split()[0] if info else ""
            blocks.append(Block(page, i + 1, lang, "\n".join(body) + "\n", directive))
            i = j + 1
            continue
        if re.fullmatch(r"\s*<!--\s*result\s*-->\s*", lines[i]):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            table: list[str] = []
            while j < len(lines) and lines[j].strip().startswith("|"):
                table.append(lines[j])
                j += 1
            if len(table) < 2 or not re.fullmatch(r"[\s|:-]+", table[1]):
                raise fail(page, i + 1, "<!-- result --> must be followed by a markdown table")
            rows = [_cells(table[0])] + [_cells(row) for row in table[2:]]
            blocks.append(Block(page, i + 2, "table", "", {"result": ""}, rows))
            i = j
            continue
        i += 1
    return blocks


# --- output ---------------------------------------------------------------------------------


def _normal(text: str) -> str:
    """Trailing whitespace and surrounding blank lines dropped; runs of blanks or dashes count
    as one, so a column's width need not be reproduced exactly."""
    lines = [re.sub(r"-{2,}", "--", re.sub(r"[ \t]+", " ", line.rstrip())) for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def matches(expected: str, actual: str) -> bool:
    checker = doctest.OutputChecker()
    return checker.check_output(_normal(expected), _normal(actual), doctest.ELLIPSIS)


def psql_table(names: list[str], numeric: list[bool], rows: list[list[str]]) -> str:
    """A result as `psql` prints it in aligned format."""
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    header = []
    for name, width in zip(names, widths, strict=True):
        pad = width - len(name)
        header.append(" " * (pad // 2) + name + " " * ((pad + 1) // 2))
    out = [" " + " | ".join(header), "+".join("-" * (w + 2) for w in widths)]
    for row in rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        out.append(" " + " | ".join(cells))
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(line.rstrip() for line in out) + "\n"


def psql_error(error: psycopg.Error) -> str:
    diag = error.diag
    out = [f"ERROR:  {diag.message_primary or error}"]
    if diag.message_detail:
        out.append(f"DETAIL:  {diag.message_detail}")
    if diag.message_hint:
        out.append(f"HINT:  {diag.message_hint}")
    return "\n".join(out) + "\n"


# --- SQL ------------------------------------------------------------------------------------


@dataclass
class Statement:
    parts: list[str | tuple[str, str, int]]  # text, or (quote, name, line) of a :'name'
    line: int
    gset: str | None  # prefix (possibly "") when the statement ended with \gset

    @property
    def sql(self) -> str:
        return "".join(p if isinstance(p, str) else f":{p[0]}{p[1]}{p[0]}" for p in self.parts)

    def render(self, page: Path, names: dict[str, Any]) -> str:
        """The statement with each variable replaced, as psql does when it sends it."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            quote, name, line = part
            if name not in names:
                raise fail(page, line, f":{quote}{name}{quote} names nothing defined on this page")
            value = _literal(page, line, name, names[name])
            out.append("'" + value.replace("'", "''") + "'" if quote == "'"
                       else '"' + value.replace('"', '""') + '"')
        return "".join(out)


def _literal(page: Path, line: int, name: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise fail(page, line, f":'{name}' is {value!r}: only str, uuid, int, bytes, dates")
    if isinstance(value, bytes):
        text = "\\x" + value.hex()
    elif isinstance(value, str | UUID | int | datetime | date):
        text = value.isoformat() if isinstance(value, datetime | date) else str(value)
    else:
        raise fail(page, line, f":'{name}' is a {type(value).__name__}: only str, uuid, int, "
                   "bytes, dates can stand in SQL")
    return text


def split_sql(page: Path, first_line: int, text: str) -> list[Statement]:
    """Split a block into statements as psql does, marking :'name' and :"name"."""
    statements: list[Statement] = []
    buf: list[str | tuple[str, str, int]] = []
    line = first_line
    start: int | None = None
    i = 0
    n = len(text)

    def finish(gset: str | None) -> None:
        nonlocal start
        statement = Statement(list(buf), start or line, gset)
        if _has_code(statement.sql):
            statements.append(statement)
        elif gset is not None:
            raise fail(page, line, "\\gset without a query")
        buf.clear()
        start = None

    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            buf.append(ch)
            i += 1
            continue
        if start is None and not ch.isspace():
            start = line
        if text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            buf.append(text[i:end])
            i = end
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i)
            if end < 0:
                raise fail(page, line, "unterminated /* comment")
            chunk = text[i:end + 2]
            buf.append(chunk)
            line += chunk.count("\n")
            i = end + 2
            continue
        if ch in "'\"":
            end = i + 1
            while True:
                end = text.find(ch, end)
                if end < 0:
                    raise fail(page, line, f"unterminated {ch} quote")
                if text.startswith(ch * 2, end):
                    end += 2
                    continue
                break
            chunk = text[i:end + 1]
            buf.append(chunk)
            line += chunk.count("\n")
            i = end + 1
            continue
        dollar = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
        if dollar and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            tag = dollar.group(0)
            end = text.find(tag, i + len(tag))
            if end < 0:
                raise fail(page, line, f"unterminated {tag} quote")
            chunk = text[i:end + len(tag)]
            buf.append(chunk)
            line += chunk.count("\n")
            i = end + len(tag)
            continue
        variable = re.match(r":(['\"])([A-Za-z_][A-Za-z0-9_]*)\1", text[i:])
        if variable and not text.startswith("::", i) and not (i and text[i - 1] == ":"):
            buf.append((variable.group(1), variable.group(2), line))
            i += len(variable.group(0))
            continue
        if ch == ";":
            buf.append(ch)
            finish(None)
            i += 1
            continue
        if ch == "\\":
            meta = re.match(r"\\gset(?:[ \t]+([A-Za-z_][A-Za-z0-9_]*))?[ \t]*(?=\n|$)", text[i:])
            if not meta:
                raise fail(page, line, "only the \\gset meta-command is supported")
            finish(meta.group(1) or "")
            i += len(meta.group(0))
            continue
        buf.append(ch)
        i += 1
    finish(None)
    return statements


def _has_code(sql: str) -> bool:
    stripped = re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S)
    return stripped.strip(" \t\n;") != ""


def credential(page: Path, line: int, names: dict[str, Any], name: str, secret: bytes) -> str:
    if name not in names:
        raise fail(page, line, f"request {name}: no such name on this page")
    value = names[name]
    if isinstance(value, api.ApiKey):
        return str(value.secret)
    if isinstance(value, UUID):
        return str(user_token(secret, value))
    if isinstance(value, str):
        return value
    raise fail(page, line, f"request {name}: {type(value).__name__} is not a user id, key or credential")


TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT)\b", re.I)


# --- running a page -------------------------------------------------------------------------


@dataclass
class Result:
    names: list[str]
    rows: list[list[str]]


class PageRun:
    def __init__(self, page: Path, db: Database, workdir: Path) -> None:
        self.page = page
        self.db = db
        self.workdir = workdir
        self.names: dict[str, Any] = {
            "__name__": f"docs_{page.stem.replace('-', '_')}",
            "app_dsn": db.app_conninfo,
            "service_dsn": db.service_conninfo,
            "dba_dsn": db.admin_conninfo,
            "SECRET": db.token_secret,
        }
        self.sessions: dict[str, psycopg.Connection[Any]] = {}
        self.notices: list[str] = []
        self.output: str | None = None  # what the previous runnable block printed
        self.result: Result | None = None  # the previous sql block's last result set
        self.skipped: list[Block] = []

    def close(self) -> None:
        for conn in self.sessions.values():
            conn.close()

    def session(self, role: str) -> psycopg.Connection[Any]:
        if role not in self.sessions:
            conninfo = {
                "app": self.db.app_conninfo,
                "service": self.db.service_conninfo,
            }.get(role, self.db.admin_conninfo)
            conn = psycopg.connect(conninfo, autocommit=True)
            conn.add_notice_handler(
                lambda diag: self.notices.append(f"{diag.severity}:  {diag.message_primary}")
            )
            if role == "owner":
                conn.execute("SET ROLE tracefence_owner")
            self.sessions[role] = conn
        return self.sessions[role]

    def run(self) -> None:
        blocks = parse_page(self.page)
        previous: Block | None = None
        for block in blocks:
            if "not run" in block.directive:
                if not block.directive["not run"]:
                    raise fail(self.page, block.line, "not run needs a reason: <!-- not run: why -->")
                self.skipped.append(block)
                self.output, self.result, previous = None, None, block
                continue
            if block.lang not in LANGUAGES | {"table"}:
                raise fail(self.page, block.line, f"unknown code block language {block.lang!r}: use "
                           f"{', '.join(sorted(LANGUAGES))} or mark it <!-- not run: reason -->")
            allowed = {"sql": {"as", "error"}, "console": {"exit"}, "table": {"result"}}
            extra = set(block.directive) - allowed.get(block.lang, set())
            if extra:
                raise fail(self.page, block.line, f"directive {', '.join(sorted(extra))} does not "
                           f"apply to a {block.lang} block")
            if block.lang == "text":
                self.check_output(block, previous)
            elif block.lang == "table":
                self.check_table(block, previous)
            elif block.lang == "python":
                self.output, self.result = self.run_python(block), None
            elif block.lang == "sql":
                self.output = self.run_sql(block)
            else:
                self.output, self.result = self.run_console(block), None
            previous = block

    def check_output(self, block: Block, previous: Block | None) -> None:
        if previous is None or self.output is None:
            raise fail(self.page, block.line, "a text block shows the output of the block before it, "
                       "but no block ran before it (mark it <!-- not run: reason --> if illustrative)")
        if not matches(block.text, self.output):
            raise fail(self.page, block.line, f"output of the block at line {previous.line} differs\n"
                       f"--- documented\n{_normal(block.text)}--- actual\n{_normal(self.output)}")

    def check_table(self, block: Block, previous: Block | None) -> None:
        if previous is None or previous.lang != "sql" or self.result is None:
            raise fail(self.page, block.line, "a result table must follow a sql block that returned rows")
        expected = [self.result.names, *self.result.rows]
        if block.rows != expected:
            documented = "\n".join(" | ".join(r) for r in block.rows)
            actual = "\n".join(" | ".join(r) for r in expected)
            raise fail(self.page, block.line, f"table differs from the result of the sql block at line "
                       f"{previous.line}\n--- documented\n{documented}\n--- database\n{actual}")

    def run_python(self, block: Block) -> str:
        code = compile("\n" * block.line + block.text, str(self.page), "exec")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(code, self.names)
        except Exception as error:
            trace = "".join(traceback.format_exception(error))
            raise fail(self.page, block.line, f"python block raised {type(error).__name__}: {error}\n"
                       f"{trace}") from error
        return out.getvalue()

    def run_sql(self, block: Block) -> str:
        page, line = self.page, block.line
        as_clause = block.directive.get("as", "").split()
        if not as_clause or as_clause[0] not in SQL_ROLES:
            raise fail(page, line, "a sql block needs <!-- as: ROLE --> with ROLE one of "
                       f"{', '.join(sorted(SQL_ROLES))} (optionally followed by 'request NAME')")
        role, rest = as_clause[0], as_clause[1:]
        if rest and (len(rest) != 2 or rest[0] != "request"):
            raise fail(page, line, f"as: {' '.join(as_clause)}: expected 'as: ROLE request NAME'")
        expected_error = block.directive.get("error")
        if expected_error is not None and not re.fullmatch(r"[0-9A-Z]{5}", expected_error):
            raise fail(page, line, f"error: {expected_error!r} is not a SQLSTATE")
        statements = split_sql(page, line + 1, block.text)
        conn = self.session(role)
        self.notices.clear()
        self.result = None
        out: list[str] = []
        failed: tuple[Statement, psycopg.Error] | None = None
        if rest:
            for statement in statements:
                if TRANSACTION_CONTROL.match(statement.sql):
                    raise fail(page, statement.line, "a request block is already one transaction: "
                               "drop BEGIN/COMMIT or drop 'request'")
            cred = credential(page, line, self.names, rest[1], self.db.token_secret)
        try:
            if rest:
                conn.execute("BEGIN")
                try:
                    conn.execute("SELECT iam.begin_request(%s)", [cred], prepare=False)
                except psycopg.Error as error:
                    failed = (Statement([f"SELECT iam.begin_request(<credential of {rest[1]}>)"],
                                        line, None), error)
                    statements = []
            for statement in statements:
                try:
                    cur = conn.execute(statement.render(page, self.names).encode(), prepare=False)
                except psycopg.Error as error:
                    failed = (statement, error)
                    break
                if self.notices:
                    out.append("\n".join(self.notices))
                    self.notices.clear()
                self.collect(statement, cur, out)
            if rest and failed is None:
                try:
                    conn.execute("COMMIT")
                except psycopg.Error as error:
                    failed = (statements[-1], error)
        finally:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        if failed is not None:
            statement, problem = failed
            out.append("\n".join([*self.notices, psql_error(problem).rstrip("\n")]))
            if expected_error is None:
                raise fail(page, statement.line, f"statement failed ({problem.sqlstate}): "
                           f"{psql_error(problem)}{statement.sql}")
            if problem.sqlstate != expected_error:
                raise fail(page, statement.line, f"expected SQLSTATE {expected_error}, got "
                           f"{problem.sqlstate}: {psql_error(problem)}")
        elif expected_error is not None:
            raise fail(page, line, f"expected SQLSTATE {expected_error}, but the block succeeded")
        return "\n\n".join(out) + ("\n" if out else "")

    def collect(self, statement: Statement, cur: psycopg.Cursor[Any], out: list[str]) -> None:
        if cur.description is None or cur.pgresult is None:
            if statement.gset is not None:
                raise fail(self.page, statement.line, "\\gset: the query returned no rows")
            return
        names = [column.name for column in cur.description]
        result = cur.pgresult
        rows = [
            [(v.decode() if (v := result.get_value(r, c)) is not None else "")
             for c in range(result.nfields)]
            for r in range(result.ntuples)
        ]
        if statement.gset is not None:
            values = cur.fetchall()
            if len(values) != 1:
                raise fail(self.page, statement.line, f"\\gset needs exactly one row, got {len(values)}")
            for name, value in zip(names, values[0], strict=True):
                if not NAME.fullmatch(statement.gset + name):
                    raise fail(self.page, statement.line, f"\\gset: column {name!r} is not a name")
                self.names[statement.gset + name] = value
            return
        numeric = [column.type_code in NUMERIC_OIDS for column in cur.description]
        out.append(psql_table(names, numeric, rows).rstrip("\n"))
        self.result = Result(names, rows)

    def console_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG", "TRACEFENCE_")) and k not in ("COLUMNS", "LINES")}
        server = self.db.server
        env.update(PGHOST=server.host, PGPORT=str(server.port), PGUSER=server.user,
                   PGDATABASE=self.db.name, COLUMNS="160", TERM="dumb", NO_COLOR="1")
        if server.password:
            env["PGPASSWORD"] = server.password
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for name, value in self.names.items():
            if NAME.fullmatch(name) and not name.startswith("_") and not isinstance(value, bool) \
                    and isinstance(value, str | UUID | int):
                env[name] = str(value)
        return env

    def run_console(self, block: Block) -> str:
        commands: list[tuple[int, str, list[str]]] = []
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            line_no = block.line + 1 + i
            text = lines[i]
            if not text.startswith("$ "):
                if not commands:
                    raise fail(self.page, line_no, "a console block starts with a '$ ' command line")
                commands[-1][2].append(text)
                i += 1
                continue
            command = text[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            if not re.match(r"tracefence(\s|$)", command):
                raise fail(self.page, line_no, "console blocks run only 'tracefence ...' commands; "
                           "mark others <!-- not run: reason -->")
            commands.append((line_no, command, []))
            i += 1
        if not commands:
            raise fail(self.page, block.line, "empty console block")
        if shutil.which("tracefence", path=self.console_env()["PATH"]) is None:
            raise fail(self.page, block.line, "the tracefence command is not installed")
        expected_exit = int(block.directive.get("exit", "0"))
        transcript: list[str] = []
        for index, (line_no, command, expected) in enumerate(commands):
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=600,
                env=self.console_env(), cwd=self.workdir,
            )
            output = done.stdout + done.stderr
            transcript.append(output)
            want = expected_exit if index == len(commands) - 1 else 0
            if done.returncode != want:
                raise fail(self.page, line_no, f"exit status {done.returncode}, documented {want}: "
                           f"{command}\n{output}")
            if "".join(expected).strip() and not matches("\n".join(expected), output):
                raise fail(self.page, line_no, f"output of {command!r} differs\n--- documented\n"
                           f"{_normal(chr(10).join(expected))}--- actual\n{_normal(output)}")
        return "".join(transcript)


def run_page(page: Path, db: Database, workdir: Path, run: PageRun | None = None) -> PageRun:
    run = run or PageRun(page, db, workdir)
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        run.run()
    finally:
        os.chdir(cwd)
        run.close()
    return run


@contextlib.contextmanager
def dropping_what_the_page_created(page: Path, db: Database, names: dict[str, Any]) -> Iterator[None]:
    """Roles and databases are cluster-wide: after the page, drop the new roles the page names
    in its text and the new databases a page name holds (the page's own database goes anyway)."""
    roles = "SELECT rolname FROM pg_roles"
    databases = "SELECT datname FROM pg_database"
    with psycopg.connect(db.admin_conninfo, autocommit=True) as conn:
        before = {r[0] for r in conn.execute(roles).fetchall()}
        before |= {r[0] for r in conn.execute(databases).fetchall()}
    try:
        yield
    finally:
        text = page.read_text()
        values = {v for v in names.values() if isinstance(v, str)}
        identifier = psycopg.sql.Identifier
        with psycopg.connect(db.admin_conninfo, autocommit=True) as conn:
            for (name,) in conn.execute(databases).fetchall():
                if name not in before and name in values:
                    conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(identifier(name)))
            for (name,) in conn.execute(roles).fetchall():
                if name not in before and re.search(rf"\b{re.escape(name)}\b", text):
                    conn.execute(psycopg.sql.SQL("DROP OWNED BY {} CASCADE").format(identifier(name)))
                    conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(identifier(name)))


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_of_the_page_does_what_it_says(page: Path, db: Database, tmp_path: Path) -> None:
    failure: DocsFailure | None = None
    run = PageRun(page, db, tmp_path)
    with dropping_what_the_page_created(page, db, run.names):
        try:
            run_page(page, db, tmp_path, run)
        except DocsFailure as error:
            failure = error
    if failure is not None:
        pytest.fail(str(failure), pytrace=False)


def test_index_links_every_page_and_every_link_resolves() -> None:
    index = (DOCS / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", index))
    for page in PAGES:
        if page.name != "README.md":
            assert page.name in links, f"docs/README.md does not link {page.name}"
    for link in links:
        assert (DOCS / link).is_file(), f"docs/README.md links {link}, which does not exist"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve_to_a_page_and_heading() -> None:
    anchors = {
        page.name: {_anchor(h) for h in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)}
        for page in PAGES
    }
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            for target, anchor in re.findall(r"\]\(([\w.-]+\.md)?(?:#([\w-]+))?\)", line):
                target = target or page.name
                assert target in anchors, f"{_rel(page)}:{number}: link to missing page {target}"
                assert not anchor or anchor in anchors[target], \
                    f"{_rel(page)}:{number}: {target} has no heading #{anchor}"


def test_reference_tables_are_checked_against_the_catalog() -> None:
    """The roles and permissions tables of the reference are results, not hand-written."""
    blocks = parse_page(DOCS / "reference.md")
    checked = [
        previous.text for previous, block in itertools.pairwise(blocks)
        if block.lang == "table" and previous.lang == "sql"
    ]
    assert any("iam.role_permissions" in sql for sql in checked)
    assert any("FROM iam.permissions" in sql for sql in checked)


BROKEN_PAGES = {
    "unknown language": ("```bash\nls\n```\n", "unknown code block language 'bash'", 1),
    "sql without a role": ("```sql\nSELECT 1;\n```\n", "needs <!-- as: ROLE -->", 1),
    "wrong output": (
        "<!-- as: dba -->\n```sql\nSELECT 1 + 1 AS two;\n```\n\n```text\n two\n-----\n   3\n(1 row)\n```\n",
        "output of the block at line 2 differs", 6,
    ),
    "failing statement": (
        "<!-- as: app -->\n```sql\nSELECT 1;\nSELECT iam.create_user('a@b.c', 'A');\n```\n",
        "statement failed (42501)", 4,
    ),
    "other SQLSTATE than documented": (
        "<!-- as: app; error: 28000 -->\n```sql\nSELECT iam.create_user('a@b.c', 'A');\n```\n",
        "expected SQLSTATE 28000, got 42501", 3,
    ),
    "documented error that does not happen": (
        "<!-- as: dba; error: 42501 -->\n```sql\nSELECT 1;\n```\n",
        "expected SQLSTATE 42501, but the block succeeded", 2,
    ),
    "result table that drifted": (
        "<!-- as: owner -->\n```sql\nSELECT name FROM iam.roles WHERE tier = 'organisation' "
        "ORDER BY name;\n```\n<!-- result -->\n| name |\n|---|\n| `org_admin` |\n| `org_owner` |\n",
        "table differs from the result", 6,
    ),
    "unnamed variable": ("<!-- as: dba -->\n```sql\nSELECT :'nobody';\n```\n", "names nothing", 3),
    "python error": ("```python\nimport nothing_here\n```\n", "python block raised", 1),
    "text without a block before": ("```text\nhello\n```\n", "no block ran before it", 1),
    "not run without a reason": ("<!-- not run: -->\n```bash\nls\n```\n", "needs a reason", 2),
    "console other than tracefence": ("```console\n$ ls /\n```\n", "only 'tracefence ...'", 2),
    "console exit status": (
        "```console\n$ tracefence explain --principal 00000000-0000-0000-0000-000000000000 "
        "--resource 00000000-0000-0000-0000-000000000000 --permission traces:read\n```\n",
        "exit status 1, documented 0", 2,
    ),
    "unknown directive": ("<!-- as: dba; expect: 1 -->\n```sql\nSELECT 1;\n```\n", "unknown directive", 1),
}


def test_a_page_that_is_wrong_fails_at_its_line(db: Database, tmp_path: Path) -> None:
    """The checker can fail: each broken page is rejected with its page and line."""
    for label, (source, message, line) in BROKEN_PAGES.items():
        page = tmp_path / f"{label.replace(' ', '-')}.md"
        page.write_text(source)
        with pytest.raises(DocsFailure) as caught:
            run_page(page, db, tmp_path)
        assert message in str(caught.value), f"{label}: {caught.value}"
        assert str(caught.value).startswith(f"{page}:{line}: "), f"{label}: {caught.value}"


def test_blocks_of_a_page_share_names_across_languages(db: Database, tmp_path: Path) -> None:
    """\\gset names reach python and requests; python names reach sql; results are psql's."""
    page = tmp_path / "sharing.md"
    page.write_text(
        "<!-- as: service -->\n```sql\nSELECT iam.create_user('ann@example.com', 'Ann') AS ann \\gset\n```\n"
        "```python\nfrom tracefence import Fence, api\nfence = Fence(app_dsn, user_token_secret=SECRET)\n"
        "with fence.request(user=ann) as conn:\n    org = api.create_organisation(conn, 'acme', 'Acme')\n"
        "print(type(ann).__name__)\n```\n```text\nUUID\n```\n"
        "<!-- as: app request ann -->\n```sql\nSELECT slug, name FROM tenancy.organisations "
        "WHERE id = :'org';\n```\n```text\n slug | name\n------+------\n acme | Acme\n(1 row)\n```\n"
    )
    run = run_page(page, db, tmp_path)
    assert isinstance(run.names["ann"], UUID)
    assert run.result is not None and run.result.rows == [["acme", "Acme"]]
