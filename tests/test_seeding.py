"""Derived seeds and ids: what every stored run's weights and ids were drawn from, so they must never change."""

from __future__ import annotations

import hashlib

from evoarena.seeding import derived_seed, digest


def test_a_derived_seed_is_the_halved_little_endian_blake2b_of_its_parts_joined_by_colons():
    raw = hashlib.blake2b(b"init:7:2", digest_size=8).digest()
    assert derived_seed("init", 7, 2) == int.from_bytes(raw, "little") >> 1
    assert derived_seed("init", 7, 2) == 3806145151882308975  # as stored runs were drawn: never to change
    assert 0 <= derived_seed("match", 0, 0) < 2**63


def test_a_digest_is_sixteen_hex_digits_and_each_part_changes_it():
    assert digest("founder", 0, 1, 0, "gen") == hashlib.blake2b(b"founder:0:1:0:gen", digest_size=8).hexdigest()
    assert len({digest("task", 0, 1), digest("task", 0, 2), digest("task", 1, 1), digest("child", 0, 1)}) == 4
