"""The integration permission set grants read on every field the daemon's own SOQL names (issue 12, part 1).

The list of fields comes from the queries the daemon sends (`sfsign.reads`), so adding a field to a
query without granting it here fails this test, not a customer's first sign-off under a minimum-access
profile. Whether a field takes a field permission at all is the org's `permissionable` flag: required
fields such as Opportunity.CloseDate and StageName must stay out, or the deploy fails.
"""

from __future__ import annotations

import pytest

from sfsign import metadata as md
from sfsign.emulator.access import Access
from sfsign.emulator.schema import build_org_schema
from sfsign.reads import UnknownRelationship, daemon_queries, fields_read

SHIPPED_RULE_FIELDS = {"Opportunity": ["StageName"], "Quote": ["Status"]}


@pytest.fixture(scope="module")
def schema() -> md.Schema:
    return md.load_schema()


def test_integration_permission_set_reads_every_field_the_daemon_queries(schema: md.Schema) -> None:
    org = build_org_schema(schema)
    granted = Access.granted_by([schema.permission_sets["sfsign_Integration"]])
    reads = fields_read(daemon_queries(SHIPPED_RULE_FIELDS))
    assert {"Opportunity.Amount", "Quote.ExpirationDate", "Contact.Email", "OpportunityContactRole.Role",
            "OpportunityContactRole.IsPrimary", "User.IsActive", "User.Username", "Quote.BillingName"} <= {
        f"{o}.{n}" for o, names in reads.items() for n in names}, "the daemon's reads are found"
    unreadable = sorted(f"{o}.{n}" for o, names in reads.items() for n in names
                        if not granted.can_read_field(org.objects[o], org.objects[o].fields[n]))
    assert not unreadable, f"sfsign_Integration does not grant read on {unreadable}"


def test_required_fields_the_daemon_reads_carry_no_field_permission(schema: md.Schema) -> None:
    pset = schema.permission_sets["sfsign_Integration"]
    for name in ("Opportunity.CloseDate", "Opportunity.StageName", "Opportunity.Name", "Account.Name"):
        assert name not in pset.field_permissions, f"{name} is required: a field permission fails the deploy"


def test_without_the_standard_field_grants_amount_is_hidden(schema: md.Schema) -> None:
    """The guard is real: the permission set as it was (sfsign's own fields only) misses standard reads."""
    org = build_org_schema(schema)
    pset = schema.permission_sets["sfsign_Integration"]
    custom_only = md.PermissionSetDef(pset.name, pset.label,
                                      {k: v for k, v in pset.field_permissions.items() if "__c" in k},
                                      dict(pset.object_permissions), pset.user_permissions)
    access = Access.granted_by([custom_only])
    opp = org.objects["Opportunity"]
    assert not access.can_read_field(opp, opp.fields["Amount"])
    assert access.can_read_field(opp, opp.fields["CloseDate"]), "required fields need no grant"


def test_reads_follow_relationships_and_refuse_unknown_ones() -> None:
    reads = fields_read(["SELECT Id, Account.Name, (SELECT Product2.ProductCode FROM OpportunityLineItems "
                         "WHERE Quantity > 1) FROM Opportunity WHERE StageName = 'Closed Won' ORDER BY CloseDate"])
    assert reads["Opportunity"] == {"Id", "AccountId", "StageName", "CloseDate"}
    assert reads["Account"] == {"Name"}
    assert reads["OpportunityLineItem"] == {"Product2Id", "Quantity"}
    assert reads["Product2"] == {"ProductCode"}
    with pytest.raises(UnknownRelationship):
        fields_read(["SELECT Owner.Manager.Name FROM Opportunity"])


def test_signer_reads_only_for_objects_whose_rules_name_signers() -> None:
    """The shipped permission set allows signers on every rule; one org's read list names what its rules use."""
    seal_only = fields_read(daemon_queries({"Opportunity": ["StageName"]}, signers=[]))
    assert "User" not in seal_only or "IsActive" not in seal_only["User"]
    assert "Role" in seal_only.get("OpportunityContactRole", set()), "the document prints the primary contact's role"
    signing = fields_read(daemon_queries({"Opportunity": ["StageName"]}, signers=["Opportunity"]))
    assert {"IsPrimary", "Role", "ContactId", "OpportunityId"} <= signing["OpportunityContactRole"]
    assert {"Username", "Name", "Email", "IsActive"} <= signing["User"]


def test_reads_under_a_rule_include_the_watched_field() -> None:
    reads = fields_read(daemon_queries({"Opportunity": ["Custom_Stage__c"]}))
    assert "Custom_Stage__c" in reads["Opportunity"]


def _soql_builders() -> set[str]:
    """`module:function` of every function in the daemon (emulator, SQLite and demo code aside) whose
    code holds SOQL text."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "sfsign"
    skip = ("emulator/", "outbox/", "ops/", "commands/demo.py", "commands/demo_customer.py", "localpki/", "reads.py")
    found = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(skip):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            texts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            texts += ["".join(v.value if isinstance(v, ast.Constant) else "x" for v in n.values)
                      for n in ast.walk(node) if isinstance(n, ast.JoinedStr)]
            if any("SELECT " in t and " FROM " in t for t in texts):
                found.add(f"{rel}:{node.name}")
    return found


def test_every_soql_the_daemon_builds_is_in_the_read_list() -> None:
    """A new query elsewhere in the daemon fails here until `sfsign.reads.daemon_queries` includes it."""
    covered = {
        "archive.py:due_query", "archive.py:latest_version_query", "reconcile.py:current_values_query",
        "reconcile.py:reconcile_query", "salesforce/records.py:opportunity_select",
        "salesforce/records.py:quote_select",
        "salesforce/files.py:version_by_transaction_query", "salesforce/files.py:version_by_checksum_query",
        "salesforce/files.py:version_document_query", "salesforce/writeback.py:content_document_query",
        "salesforce/files.py:files_by_transaction_queries", "salesforce/record_fields.py:shown_signature_query",
        # who signs a record's document (customer signing) and the counter-signers the start check reads
        "salesforce/signer_records.py:contact_roles_query", "salesforce/signer_records.py:quote_signers_query",
        "salesforce/signer_records.py:users_query",
        "salesforce/notifications.py:notification_type_query",
        # the owner the record mirror notifies of an envelope's outcome
        "salesforce/record_fields.py:owner_query",
        # a library helper the daemon does not call; it reads what reconcile_query reads
        "salesforce/records.py:find_records_in_state",
        # reads only the parent fields an admin lists in a rule (`fields:`): the org's own fields, which the
        # admin grants (docs/templates.md); the permission set covers what sfsign itself reads
        "check/org.py:check_rules",
    }
    assert _soql_builders() == covered
