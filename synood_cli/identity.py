"""The identity of a score: everything its value depends on, recorded with it and compared wherever scores meet.

A NegLabel score made against 3 ID classes and one made against 1,000 are numbers on different
scales; so are scores of another model, negative set, group count or preprocessing. Every score
file, evaluate result and threshold records the identity of its scores, and a threshold (or a
second score file) is applied only to scores of exactly the same identity. A key that one side
lacks is a difference, never a pass (docs/method.md, "Score").
"""

from __future__ import annotations

import hashlib
import json
import math

from synood_cli.errors import UsageError

IDENTITY_VERSION = 1  # bump when a key is added or its meaning changes: older files are then refused, not compared
# the order in which differences are named: the readable settings before the hashes they imply
KEYS = (
    "version", "method", "model", "weights", "checkpoint", "classes", "neg_ratio", "percentile", "pool", "negatives",
    "groups", "seed", "tau", "temperature", "preprocess", "templates", "adaptive",
)
_SHORT_NAMES = 20  # class lists up to this many names (and 200 characters) are recorded in full


def classes_entry(names: list[str]) -> dict:
    """The ID class list as count + hash, with the names themselves when the list is short."""
    joined = "\n".join(names)
    entry = {"count": len(names), "sha256": hashlib.sha256(joined.encode()).hexdigest()[:16]}
    if len(names) <= _SHORT_NAMES and len(joined) <= 200:
        entry["names"] = list(names)
    return entry


def make(**fields) -> dict:
    """An identity with every key of KEYS (a missing one is a bug here, not a pass later)."""
    missing = set(KEYS) - {"version"} - set(fields)
    if missing or set(fields) - set(KEYS):
        raise TypeError(f"identity fields: missing {sorted(missing)}, unknown {sorted(set(fields) - set(KEYS))}")
    fields = {**fields, "version": IDENTITY_VERSION}
    return {k: fields[k] for k in KEYS}


def shorten(text, limit: int = 80) -> str:
    """A value for a one-line message: str() of it, cut in the middle when long."""
    s = str(text).replace("\n", " ")
    return s if len(s) <= limit else s[: limit // 2 - 1] + "…" + s[-(limit // 2 - 1):]


def describe(key: str, value) -> str:
    """A recorded value as a message shows it; never `None`."""
    if value is None:
        return "none"
    if key == "classes" and isinstance(value, dict):
        names = value.get("names")
        count = value.get("count")
        if isinstance(names, list):
            return shorten(f"{count} classes ({', '.join(map(str, names))})", 100)
        return f"{shorten(count, 12)} classes (sha256 {shorten(value.get('sha256'), 20)})"
    if isinstance(value, (dict, list)):
        return shorten(json.dumps(value, sort_keys=True, default=str), 100)
    if isinstance(value, str):
        return repr(shorten(value, 80))
    return shorten(value, 40)


def _same(key: str, a, b) -> bool:
    if key == "classes":
        return isinstance(a, dict) and isinstance(b, dict) and (a.get("count"), a.get("sha256")) == (b.get("count"), b.get("sha256"))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def differences(recorded, current: dict, keys=None) -> list[tuple[str, str, str]]:
    """(key, recorded, current) for each key of `current` (or `keys`) that `recorded` lacks or holds otherwise."""
    if not isinstance(recorded, dict):
        return [("identity", describe("identity", recorded) if recorded is not None else "none", "a scoring identity")]
    out = []
    for k in keys or [k for k in KEYS if k in current]:
        if k not in recorded or k not in current:
            out.append((k, describe(k, recorded[k]) if k in recorded else "missing", describe(k, current[k]) if k in current else "missing"))
        elif not _same(k, recorded[k], current[k]):
            out.append((k, describe(k, recorded[k]), describe(k, current.get(k))))
    return out


def check_identity(recorded, current: dict, what: str, here: str, keys=None, hint: str | None = None) -> None:
    """Exit 2 naming every difference when `recorded` (from `what`) is not the identity of the scores `here`."""
    diffs = differences(recorded, current, keys) if recorded else [("identity", "none", "")]
    if not diffs:
        return
    if diffs[0][0] == "identity":
        raise UsageError(
            f"{what} records no scoring identity, so nothing says which scores it fits",
            hint=hint or "make it again with this synood (`synood evaluate ... --format json`)",
        )
    parts = "; ".join(f"{k}: {r} there, {c} {here}" for k, r, c in diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise UsageError(
        f"{what} was made for other scores: {parts}. Scores made another way live on another scale",
        hint=hint or "use the settings of the run that made it, or make a new one with `synood evaluate ... --format json`",
    )


def validate(identity, what: str) -> dict:
    """A recorded identity read from a file: a dict of the known shape, else exit 2 naming `what`."""
    if not isinstance(identity, dict):
        raise UsageError(f"{what}: the scoring identity is a {type(identity).__name__}, not an object", hint="the file is damaged or not made by synood")
    for k, v in identity.items():
        if not isinstance(k, str):
            raise UsageError(f"{what}: the scoring identity has a non-text key", hint="the file is damaged or not made by synood")
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{what}: the scoring identity's {shorten(k, 30)} is {v}", hint="the file is damaged")
    return identity


def validate_identities(value, what: str) -> dict:
    """{method: identity} read from a file (Parquet metadata, a sidecar, an evaluate result), type-checked."""
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{what}: `identities` is not an object of method -> identity", hint="the file is damaged or not made by synood")
    for m, ident in value.items():
        validate(ident, f"{what} ({shorten(m, 30)})")
    return value
