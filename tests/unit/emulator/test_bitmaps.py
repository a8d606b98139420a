"""The emulator's CDC field bitmaps against the examples in Salesforce's "Event Deserialization
Considerations" (`['0x650004E0','4-0x10','7-0x06']`)."""

from __future__ import annotations

import pytest

from sfsign.emulator.bitmaps import SchemaField, encode, hex_bitmap


def test_the_documented_top_level_bitmap() -> None:
    assert hex_bitmap({5, 6, 7, 10, 24, 26, 29, 30}) == "0x650004E0"


def test_bitmaps_are_byte_aligned_upper_case_hex() -> None:
    assert hex_bitmap({4}) == "0x10"
    assert hex_bitmap({1, 2}) == "0x06"
    assert hex_bitmap({0}) == "0x01"
    assert hex_bitmap({8}) == "0x0100"  # Salesforce's Java decoder reads two hex digits per byte
    assert hex_bitmap({11, 3}) == "0x0808"


FIELDS = [SchemaField("ChangeEventHeader"), SchemaField("Name"), SchemaField("Phone"),
          SchemaField("Fax"), SchemaField("BillingAddress", ("Street", "City", "State", "PostalCode")),
          SchemaField("Industry"), SchemaField("Website"),
          SchemaField("ShippingAddress", ("Street", "City", "State", "PostalCode"))]


def test_compound_components_go_to_parent_position_entries_after_the_top_level_bitmap() -> None:
    assert encode(FIELDS, ["Name", "ShippingAddress.City", "BillingAddress.Street", "ShippingAddress.State",
                           "Industry"]) == ["0x22", "4-0x01", "7-0x06"]


def test_only_compound_changes_give_no_top_level_entry_and_no_change_gives_an_empty_list() -> None:
    assert encode(FIELDS, ["BillingAddress.PostalCode"]) == ["4-0x08"]
    assert encode(FIELDS, []) == []


def test_a_whole_compound_sets_every_component_and_unknown_names_raise() -> None:
    assert encode(FIELDS, ["BillingAddress"]) == ["4-0x0F"]
    with pytest.raises(KeyError):
        encode(FIELDS, ["NoSuchField"])
    with pytest.raises(KeyError):
        encode(FIELDS, ["Phone.Extension"])
