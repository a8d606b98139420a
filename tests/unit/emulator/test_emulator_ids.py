"""Salesforce ids: the case-safe suffix, normalisation and deterministic generation."""

from __future__ import annotations

import pytest

from sfsign.emulator.ids import EMPTY_ID, IdGenerator, checksum, is_valid_id, normalize_id, to18

# 15-character ids and their 18-character forms as real orgs print them (Salesforce docs and CDC samples)
REAL_IDS = [
    ("003RM0000068xV6", "003RM0000068xV6YAI"),
    ("003RM0000068xVC", "003RM0000068xVCYAY"),
    ("005RM000001hv4S", "005RM000001hv4SYAQ"),
    ("001RM000004UF9s", "001RM000004UF9sYAG"),
    ("0015f00002JUXA8", "0015f00002JUXA8AAP"),
    ("0055f000005mc66", "0055f000005mc66AAA"),
    ("001D000000IqhSL", "001D000000IqhSLIAZ"),
    ("000000000000000", EMPTY_ID),
]


@pytest.mark.parametrize(("id15", "id18"), REAL_IDS)
def test_to18_matches_real_ids(id15: str, id18: str) -> None:
    assert to18(id15) == id18
    assert is_valid_id(id18)
    assert is_valid_id(id15)


def test_doc_example_001900K0001pPuOAAU_is_not_a_real_checksum() -> None:
    # The REST error-code page shows "001900K0001pPuOAAU"; by the checksum algorithm (verified above on
    # ids from real orgs) the 'K' in the second chunk makes the middle letter 'C', so that doc id is made up.
    assert to18("001900K0001pPuO") == "001900K0001pPuOACU"
    assert not is_valid_id("001900K0001pPuOAAU")


def test_checksum_bits_follow_upper_case_positions() -> None:
    assert checksum("AAAAAAAAAAAAAAA") == "555"
    assert checksum("aaaaaaaaaaaaaaa") == "AAA"
    assert checksum("A0000" "0B000" "0000C") == "BCQ"


def test_normalize_restores_case_from_suffix() -> None:
    assert normalize_id("003rm0000068xv6yai") == "003RM0000068xV6YAI"
    assert normalize_id("003RM0000068XV6YAI") == "003RM0000068xV6YAI"
    assert normalize_id("003RM0000068xV6") == "003RM0000068xV6YAI"
    assert normalize_id("003RM0000068xV6yai") == "003RM0000068xV6YAI"  # only the suffix in another case


def test_normalize_refuses_a_mixed_case_id_its_suffix_contradicts() -> None:
    # The REST error page answers MALFORMED_ID for this one; restoring the case would name another record.
    assert normalize_id("001900K0001pPuOAAU") is None
    assert normalize_id("003rM0000068xV6YAI") is None


@pytest.mark.parametrize("bad", ["", "abc", "003RM0000068xV6YA", "003RM0000068xV6Y!I", "003RM0000068xV6YA9", None, 42])
def test_normalize_rejects_malformed(bad: object) -> None:
    assert normalize_id(bad) is None  # type: ignore[arg-type]
    assert not is_valid_id(bad)


def test_to18_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="invalid Salesforce id"):
        to18("not-an-id")


def test_generator_is_deterministic_and_valid() -> None:
    first = [IdGenerator(start=1).new_id("006") for _ in range(2)]
    gen_a, gen_b = IdGenerator(start=40), IdGenerator(start=40)
    seq_a = [gen_a.new_id("006"), gen_a.new_id("0Q0")]
    seq_b = [gen_b.new_id("006"), gen_b.new_id("0Q0")]
    assert seq_a == seq_b
    assert first[0] == first[1]
    assert seq_a[0] != seq_a[1]
    assert seq_a[0].startswith("006") and seq_a[1].startswith("0Q0")
    assert all(len(i) == 18 and is_valid_id(i) for i in seq_a)
    assert gen_a.next_value == 42


def test_generator_rejects_bad_prefix() -> None:
    with pytest.raises(ValueError, match="3 characters"):
        IdGenerator().new_id("06")
