"""Seeds and ids derived from other values, the same on every machine and Python version.

Every derived seed in evoarena (a layer's initial weights, an identity layer's noise, a match's
sub-draws, a baseline's chunks, the arena's member ids and task seeds) is a blake2b digest of its
parts joined by ":", so that adding a use never shifts another's draws (Python's `hash` is salted
per process; a counter would depend on the order of use).
"""

from __future__ import annotations

import hashlib


def digest(*parts) -> str:
    """16 hex digits (8 bytes of blake2b) of `parts` joined by ":"."""
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).hexdigest()


def derived_seed(*parts) -> int:
    """A seed in [0, 2**63) for one use named by `parts` (torch's manual_seed takes it): `digest`'s
    8 bytes read little-endian, halved."""
    return int.from_bytes(bytes.fromhex(digest(*parts)), "little") >> 1
