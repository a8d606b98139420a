"""The emulated org's in-process parts, called directly: the store (validation, automation, files, change
records), SOQL, ids, the seed data and field-level security. No server, no network, no event loop: these run
with the unit tests.

What goes over the wire (OAuth, REST answers, Bayeux long polls, the control API, fault switches) is tested
against the running server in tests/emulator, which says so in its conftest; a test that needs `Emulator` or
an HTTP client belongs there. Test file basenames stay unique across tests/ (pytest imports them by name).
"""
