"""Reading the TOML configuration files of the broker, the connectors and the policy.

Every table is read through :class:`Table`: a key the reader does not know is an error that
names the key, the file and the closest known key (a misspelt ``privacy_unt`` or ``levl``
must never be ignored: the dataset would be served with the default in its place), and a
value of the wrong type is an error that says which type the key takes. Defaults are not
repeated here: a reader asks only for the keys that are present and leaves the rest to the
defaults of the dataclass the file is parsed into.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable

from yumen.errors import Code, YumenError

__all__ = ["Table", "did_you_mean", "read_toml", "unknown_key_error"]

_MISSING = object()


def read_toml(path: Path, what: str) -> tuple[dict[str, Any], Callable[[str], Path]]:
    """Parse ``path``; return the document and a resolver of paths relative to its folder."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise YumenError(Code.CONFIG, f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise YumenError(Code.CONFIG, f"{what} {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise YumenError(Code.CONFIG, f"{what} {path} is not valid TOML: {e}") from None
    base = path.parent.resolve()

    def resolve(value: str) -> Path:
        q = Path(value)
        return q if q.is_absolute() else base / q

    return doc, resolve


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'level'?)`` for the closest known key, or ``""`` when none is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(key: str, known: Iterable[str], *, where: str, source: str) -> YumenError:
    """``source: where has no key 'levl' (did you mean 'level'?)``, the known keys in the hint."""
    names = sorted(known)
    guess = did_you_mean(key, names)
    what = f"{where} has no key {key!r}" if where else f"unknown table {key!r}"
    return YumenError(Code.CONFIG, f"{source}: {what}{guess}",
                      hint=f"known keys: {', '.join(names)}" if names else "this table takes no keys")


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "a whole number"),
    "number": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "table": ((dict,), "a table"),
    "list": ((list,), "a list"),
    "decimal": ((str, int), 'a decimal string such as "0.5"'),
}


class Table:
    """One TOML table of a configuration file, read with its keys checked.

    ``source`` names the file (``connector config /etc/yumen/c.toml``), ``where`` the table
    inside it (``[local_policy]``, ``datasets[2] (weather-daily)``); both go into every
    message. Construct it with the keys the table may hold: any other key is rejected at once.
    """

    def __init__(self, raw: Any, known: Iterable[str], *, where: str, source: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise YumenError(Code.CONFIG, f"{source}: {where} must be a table, not {_type_name(raw)}")
        self.raw: dict[str, Any] = raw
        self.where = where
        self.source = source
        self.known = frozenset(known)
        for key in raw:
            if key not in self.known:
                raise unknown_key_error(key, self.known, where=where, source=source)

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def error(self, message: str, hint: str = "") -> YumenError:
        where = f"{self.where} " if self.where else ""
        return YumenError(Code.CONFIG, f"{self.source}: {where}{message}", hint=hint)

    def get(self, key: str, kind: str, default: Any = _MISSING) -> Any:
        """The value of ``key``, checked to be of ``kind`` (see ``_KINDS``); ``default`` when absent
        (required when no default is given)."""
        if key not in self.known:  # a reader bug, not a user error
            raise YumenError(Code.INTERNAL, f"{self.where}: {key!r} is read but not declared")
        if key not in self.raw:
            if default is _MISSING:
                raise self.error(f"{key} is required")
            return default
        value = self.raw[key]
        types, name = _KINDS[kind]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if kind == "list" and ok and not all(isinstance(v, str) for v in value):
            ok, name = False, "a list of strings"
        if kind == "decimal" and isinstance(value, float):
            raise self.error(f"{key} = {value!r}: write it as a decimal string, e.g. \"{value}\"")
        if not ok:
            raise self.error(f"{key} must be {name}, not {_type_name(value)} ({value!r})")
        return value

    def table(self, key: str, known: Iterable[str]) -> "Table":
        """A nested table, with its own known keys."""
        return Table(self.get(key, "table", {}), known, where=f"{self.where}.{key}" if self.where else f"[{key}]",
                     source=self.source)


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
