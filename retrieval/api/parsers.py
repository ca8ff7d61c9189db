"""A JSON parser that refuses nesting deeper than any request of the API needs, before parsing.

Python's json module parses arrays and objects recursively: a body nested a few thousand
levels deep (``[[[[...]]]]``, a few hundred kilobytes) exhausts the interpreter's recursion
limit, and the RecursionError escaped DRF's parser (which catches ValueError only) as a 500.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils.json import strict_constant

# The API's bodies nest two or three levels (a garment's attributes object at most); the
# margin is for clients that wrap extra data, far below what the json module can recurse.
MAX_JSON_DEPTH = 32

# A JSON string, escapes included: brackets inside strings nest nothing.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_too_deep(text: str, *, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays/objects inside one another.

    Linear in the text (two regex passes in C), then a loop over the brackets alone, left as
    soon as the limit is passed: a 200,000-level body costs milliseconds. Malformed text is
    judged as best it can be; json.loads reports its errors afterwards.
    """
    depth = 0
    for char in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser (same media type, strictness, errors), with nesting bounded first:
    too deep is a 400 parse error like any other malformed body."""

    def parse(
        self, stream: IO[bytes], media_type: str | None = None, parser_context: Any = None
    ) -> Any:
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            text = codecs.getreader(encoding)(stream).read()
        except (ValueError, LookupError) as exc:  # undecodable, or no such charset
            raise ParseError(f"JSON parse error - {exc}") from None
        if json_too_deep(text):
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels")
        parse_constant = strict_constant if self.strict else None
        try:
            return json.loads(text, parse_constant=parse_constant)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
