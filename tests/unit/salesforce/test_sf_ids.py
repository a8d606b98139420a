"""The client's id codec: every spelling of one record gives one canonical 18-character id."""

from __future__ import annotations

import pytest

from sfsign.salesforce.ids import InvalidId, canonical_id, is_canonical

# 15-character ids and the 18-character forms real orgs print for them
REAL = [
    ("003RM0000068xV6", "003RM0000068xV6YAI"),
    ("0015f00002JUXA8", "0015f00002JUXA8AAP"),
    ("0055f000005mc66", "0055f000005mc66AAA"),
    ("001D000000IqhSL", "001D000000IqhSLIAZ"),
]


@pytest.mark.parametrize(("id15", "id18"), REAL)
def test_every_spelling_of_a_record_gives_its_18_character_id(id15: str, id18: str) -> None:
    spellings = [id15, id18, id18.upper(), id18.lower(), id18[:15] + id18[15:].lower()]
    assert {canonical_id(s) for s in spellings} == {id18}
    assert is_canonical(id18) and not is_canonical(id15)


def test_ids_that_differ_only_in_case_stay_two_records() -> None:
    assert canonical_id("001D000000IqhSL") != canonical_id("001D000000IQhSL")


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("001900K0001pPuOAAU", "does not match the case"),  # Salesforce's own MALFORMED_ID example
        ("003rM0000068xV6YAI", "does not match the case"),
        ("000000000000000ZZZ", "upper-case letter"),  # the suffix marks digits as upper-case letters
        ("003RM0000068xV6Y9I", "not a case-safe id suffix"),
        ("006'; DROP", "not a Salesforce id"),
        ("006Dn00000001", "not a Salesforce id"),
        ("006Dn0000000001IAAx", "not a Salesforce id"),
        ("", "not a Salesforce id"),
    ],
)
def test_what_is_not_an_id_is_refused_with_the_reason(bad: str, why: str) -> None:
    with pytest.raises(InvalidId, match=why):
        canonical_id(bad)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidId, match="must be a string"):
        canonical_id(42)
