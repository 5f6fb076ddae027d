"""What text the API accepts, checked at the boundary so that nothing downstream meets it raw.

Every string a client sends must be valid Unicode (a lone UTF-16 surrogate such as "\\ud800" cannot
be stored by PostgreSQL or encoded as UTF-8 in a response), hold no NUL (PostgreSQL text refuses it)
and fit its length bound.  Names and identifiers hold no control characters at all; free text may
hold tabs and line breaks; a target credential is printable ASCII (it goes into an HTTP header,
where CR/LF would split it).  The validators below carry these rules into the schemas, and
`text_problem` serves the query and path parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

TextKind = Literal["name", "free", "credential"]
MAX_PARAMETER_CHARS = 2048  # any query or path parameter; the routes bound their own ones tighter
LINE_BREAKS = "\t\n\r"


def text_problem(text: str, kind: TextKind = "name") -> str | None:
    """Why `text` is not acceptable as `kind` (None: it is), in words that never repeat it."""
    for char in text:
        code = ord(char)
        if code == 0:
            return "contains a NUL character"
        if 0xD800 <= code <= 0xDFFF:
            return f"contains a lone UTF-16 surrogate (U+{code:04X}), which is not valid Unicode text"
        if kind == "credential" and not 0x21 <= code <= 0x7E:
            return "must be printable ASCII without spaces, line breaks or other characters"
        if (code < 0x20 or 0x7F <= code <= 0x9F) and not (kind == "free" and char in LINE_BREAKS):
            return f"contains the control character U+{code:04X}"
    return None


def _checker(kind: TextKind) -> AfterValidator:
    def check(value: str) -> str:
        problem = text_problem(value, kind)
        if problem:
            raise PydanticCustomError("invalid_text", problem)
        return value

    return AfterValidator(check)


# in a schema: Annotated[str, Field(max_length=...), NAME]
NAME = _checker("name")  # names and identifiers: no control characters
FREE_TEXT = _checker("free")  # text for people: tabs and line breaks allowed
