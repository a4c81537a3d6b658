"""The one closest-match helper for every "unknown X ... did you mean ...; valid: ..." error in the package, and the
one reader of installed package versions (what checkpoints, builds and runs record).

Standard library only, so every package (including the pure-torch `vla` and LIBERO worker processes that import
no torch) can use it:

    from hints import did_you_mean, unknown
    raise unknown("LIBERO suite", "spatail", ["libero_spatial", "libero_object"])
    # ValueError: unknown LIBERO suite 'spatail' (did you mean 'libero_spatial'?); valid: libero_spatial, ...
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from importlib import metadata


def did_you_mean(value: object, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` (difflib), or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(what: str, value: object, choices: Iterable[str], valid: str | None = None) -> ValueError:
    """ValueError 'unknown <what> <value> (did you mean ...?); valid: <choices>' to raise.

    `valid` replaces the listed choices in the message (e.g. 'libero_spatial (spatial), ...')."""
    choices = [str(c) for c in choices]
    listed = valid if valid is not None else ", ".join(choices)
    return ValueError(f"unknown {what} {value!r}{did_you_mean(value, choices)}; valid: {listed}")


def check(what: str, value: object, choices: Iterable[str]) -> None:
    """Raise `unknown(...)` unless `value` is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise unknown(what, value, choices)


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """package -> installed version (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
