"""Credentials kept out of every file and log oneseg writes.

A database URL (`automl.storage: postgresql://user:password@host/db`) or a signed link holds a
secret that a spec needs but that no results folder, status line or error should repeat:
`redact` writes `***` in its place.
"""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@")
# ?password=...&token=... in URLs and key=value lists
_SECRET_PARAM = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|signature)=[^\s&;,'\"]+"
)


# api_key: VALUE as a written spec (YAML) holds it (serve.api_key)
_SECRET_KEY = re.compile(
    r"(?im)^(\s*(?:api[_-]?key|password|passwd|secret|token)\s*:[ \t]*)(?!''|\"\"|$)(\S.*)$"
)


def redact(text: str) -> str:
    """`text` with the passwords of URLs, secret-named parameters and secret-named YAML keys
    (`api_key: ...`) replaced by `***`."""
    text = _USERINFO.sub(r"\1:***@", text)
    text = _SECRET_KEY.sub(lambda m: f"{m.group(1)}'***'", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)
