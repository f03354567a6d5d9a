"""Class selections on the command line: `A:B` (half-open), `7`, `1,3,7`, `0:10,20:30`, `:50`, `900:`.

Indices refer to the sorted class-folder order (ImageFolder order), so `--classes 0:100` means
the same classes on every machine and every rank.
"""

from __future__ import annotations

from synood_cli.errors import UsageError

HINT = "use A:B (half-open), a single index, or a comma list such as 0:10,20,30:40"


def parse_class_spec(spec: str | None, num_classes: int) -> list[int]:
    """Sorted, de-duplicated class indices; anything outside [0, num_classes) is refused."""
    if spec is None or spec.strip() in ("", "all", ":"):
        return list(range(num_classes))
    picked: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise UsageError(f"--classes {spec!r}: empty item", hint=HINT)
        try:
            if ":" in part:
                lo_s, _, hi_s = part.partition(":")
                lo = int(lo_s) if lo_s.strip() else 0
                hi = int(hi_s) if hi_s.strip() else num_classes
                if lo < 0 or hi > num_classes or lo >= hi:
                    raise UsageError(
                        f"--classes {part} is outside the folder's {num_classes} classes (valid: 0:{num_classes})"
                        if lo < hi else f"--classes {part} is empty (A:B needs A < B)",
                        hint=HINT,
                    )
                picked.update(range(lo, hi))
            else:
                i = int(part)
                if not 0 <= i < num_classes:
                    raise UsageError(f"--classes {part} is outside the folder's {num_classes} classes (0 to {num_classes - 1})", hint=HINT)
                picked.add(i)
        except UsageError:
            raise  # a UsageError is a ValueError too: keep its own message
        except ValueError:
            raise UsageError(f"--classes {spec!r}: {part!r} is not an index or a range", hint=HINT) from None
    return sorted(picked)


def format_class_spec(indices: list[int]) -> str:
    """The shortest A:B,C form of a sorted index list (for manifests and messages)."""
    if not indices:
        return ""
    parts, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev + 1}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def shard_for_rank(indices: list[int], rank: int, world: int) -> list[int]:
    """A contiguous, disjoint slice per rank; the union over ranks is `indices`."""
    n = len(indices)
    lo = rank * n // world
    hi = (rank + 1) * n // world
    return indices[lo:hi]
