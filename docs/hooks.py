"""MkDocs hook: the docstrings' reStructuredText roles as code in the API reference.

The zoo's docstrings name objects the Sphinx way (``:class:`~zoo.spec.Recipe```).
mkdocstrings renders the role's name as text before the code span; this hook drops
it, and a leading ``~`` shows only the last part of the dotted name, as Sphinx does.
(``hooks:`` in mkdocs.yml; excluded from the pages by ``exclude_docs``.)
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):"
                  r"<code>(~?)([^<]*)</code>")


def _code(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(_code, html)
