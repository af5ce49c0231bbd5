"""The one way the project reads YAML (model configs, study files, base_config.file).

Aliases are refused, not expanded: a few hundred bytes of nested aliases ("billion laughs") expand
to gigabytes under yaml.safe_load, and no depmicro file needs them. Without aliases the parsed
object is at most as large as the text, so a file's size bounds its cost. A key written twice in
one mapping is refused too (yaml keeps the last one, silently dropping the other setting). A file that is empty,
binary or not UTF-8 is refused too: each problem is one DepmicroError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from depmicro.core.errors import DepmicroError


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first anchor or alias instead of building the repeated object."""

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise yaml.YAMLError(f"YAML anchors and aliases (&/*) are not accepted (line {mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key fails in yaml's own construct_mapping, with its own message
            if key in seen:
                raise yaml.YAMLError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """Parse YAML text without aliases; yaml.YAMLError on bad syntax or an alias."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | os.PathLike, what: str = "file") -> Any:
    """Read and parse `path`; DepmicroError (one line, naming the file) for anything unusable."""
    p = Path(path)
    if p.is_dir():
        raise DepmicroError(f"{p}: is a directory, expected a YAML {what}")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DepmicroError(f"{p}: no such {what}") from None
    except OSError as exc:
        raise DepmicroError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in raw:
        raise DepmicroError(f"{p}: not a text file (binary content); expected a YAML {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DepmicroError(f"{p}: not a UTF-8 text file; expected a YAML {what}") from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise DepmicroError(f"{p}: is empty; expected a YAML {what}")
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise DepmicroError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
