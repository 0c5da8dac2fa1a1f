"""Griffe extension: render the project's reST-flavoured docstrings as Markdown.

The docstrings follow Google style with a few reStructuredText habits that Markdown
would mangle; this extension rewrites them before mkdocstrings renders them:

* a doctest (``>>>`` lines, their continuation and output, at any indentation) becomes a
  fenced ``python`` block (Markdown would read ``>>>`` as nested quotes);
* a literal block (a paragraph ending in ``::`` followed by an indented block) becomes a
  fenced ``text`` block, the ``::`` a single colon;
* Sphinx roles (``:mod:`x```, ``:class:`x```, ...) become inline code;
* ``\\ `` (reST's escaped space) is dropped;
* list items are re-indented to Markdown's four columns per level (reST lets the text of
  ``1. item`` continue at three columns, ``* item`` at two; Python-Markdown would end the
  list there and show the rest of the item as a paragraph, or a nested list as text), and
  a literal block inside an item stays inside it.

Loaded by ``mkdocs.yml`` (``extensions`` of the python handler); used only to build the docs.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|obj|exc|ref):`~?([^`]+)`")
_MARKER = re.compile(r"^( *)([*+-]|\d+[.)]) +(?=\S)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _indent_lists(lines: list[str]) -> list[str]:
    """Re-indent list items so that each level's content sits four columns past its marker."""
    out: list[str] = []
    stack: list[tuple[int, int]] = []  # (content column in the input, shift of the content)
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        ind = _indent(line)
        in_list = bool(stack)
        while stack and ind < stack[-1][0]:
            stack.pop()
        shift = stack[-1][1] if stack else 0
        match = _MARKER.match(line)
        if match and in_list and out and out[-1].strip() and not _MARKER.match(out[-1]):
            out.append("")  # an item after a paragraph of the previous one: not its lazy continuation
        out.append(" " * (ind + shift) + line.lstrip(" "))
        if match and not line.lstrip().startswith(">>>"):
            content = match.end()
            stack.append((content, ind + shift + 4 - content))
    return out


def rst_to_markdown(text: str) -> str:
    """Rewrite doctests, literal blocks, lists and roles of a (dedented) docstring as Markdown."""
    lines = _indent_lists(text.splitlines())
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        # a doctest: >>> / ... lines and their output, up to a blank or a less indented line
        if stripped.startswith(">>>"):
            pad = _indent(line)
            out.append(" " * pad + "```python")
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= pad:
                out.append(lines[i])
                i += 1
            out.append(" " * pad + "```")
            continue
        # a literal block: "text::" + blank line + indented block
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > _indent(line):
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(_ROLE.sub(r"`\1`", head) + ":")
                out.append("")
                base = _indent(lines[j])
                block: list[str] = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) >= base):
                    block.append(lines[k])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                pad = " " * (_indent(line) + (4 if _MARKER.match(line) else 0))
                out.append(pad + "```text")
                out.extend(pad + b[base:] if b.strip() else "" for b in block)
                out.append(pad + "```")
                out.append("")
                i = k
                continue
        out.append(_ROLE.sub(r"`\1`", line).replace("\\ ", ""))
        i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring once, when its object is created."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
