"""A small, deterministic sales org: the data demos and end-to-end tests run against.

A seller (Northwind Cloud GmbH), an API integration user and three reps, EUR/USD multi-currency, a
standard price book, accounts in France, Germany, the US and the UK with contacts, opportunities in
early stages with line items and primary contact roles, and draft quotes. Two opportunities are
deliberately incomplete (no line items, no contact role) so the daemon's "cannot render" path can be
exercised. The same store state yields the same ids every time, and seeding emits no change events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sfsign.emulator.store import OrgStore, Txn

INTEGRATION_USERNAME = "sfsign-integration@northwind.example"


@dataclass
class SeedInfo:
    """Ids of the seeded records by stable keys (e.g. `opportunities["acme-renewal"]`)."""

    org_id: str
    integration_username: str
    integration_user_id: str
    rep_username: str
    standard_pricebook_id: str
    users: dict[str, str] = field(default_factory=dict)
    usernames: dict[str, str] = field(default_factory=dict)
    currencies: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    contacts: dict[str, str] = field(default_factory=dict)
    products: dict[str, str] = field(default_factory=dict)
    pricebook_entries: dict[str, str] = field(default_factory=dict)  # "<ProductCode>/<ISO>"
    opportunities: dict[str, str] = field(default_factory=dict)
    quotes: dict[str, str] = field(default_factory=dict)
    # keys of the deliberately incomplete opportunities
    opportunity_without_line_items: str = "hanse-migration"
    opportunity_without_contact_role: str = "lumiere-pilot"


_USER_DEFAULTS = {"TimeZoneSidKey": "Europe/Berlin", "LocaleSidKey": "de_DE", "EmailEncodingKey": "UTF-8",
                  "LanguageLocaleKey": "en_US", "IsActive": True, "CompanyName": "Northwind Cloud GmbH"}

USERS: dict[str, dict[str, Any]] = {
    "integration": {"Username": INTEGRATION_USERNAME, "FirstName": "sfsign", "LastName": "Integration",
                    "Email": "sfsign-integration@northwind.example", "Alias": "sfsign",
                    "Title": "API Integration User", "Department": "IT", "DefaultCurrencyIsoCode": "EUR"},
    "lena": {"Username": "lena.hoffmann@northwind.example", "FirstName": "Lena", "LastName": "Hoffmann",
             "Email": "lena.hoffmann@northwind.example", "Alias": "lhoff", "Title": "Account Executive DACH",
             "Department": "Sales", "Phone": "+49 30 5557 1201", "DefaultCurrencyIsoCode": "EUR"},
    "marc": {"Username": "marc.dubois@northwind.example", "FirstName": "Marc", "LastName": "Dubois",
             "Email": "marc.dubois@northwind.example", "Alias": "mdubo", "Title": "Senior Account Executive France",
             "Department": "Sales", "Phone": "+33 1 55 57 12 02", "TimeZoneSidKey": "Europe/Paris",
             "LocaleSidKey": "fr_FR", "DefaultCurrencyIsoCode": "EUR"},
    "emily": {"Username": "emily.carter@northwind.example", "FirstName": "Emily", "LastName": "Carter",
              "Email": "emily.carter@northwind.example", "Alias": "ecart", "Title": "Sales Director International",
              "Department": "Sales", "Phone": "+1 415 555 0103", "TimeZoneSidKey": "America/New_York",
              "LocaleSidKey": "en_US", "DefaultCurrencyIsoCode": "USD"},
}

# code: (name, family, description, EUR price, USD price)
PRODUCTS: dict[str, tuple[str, str, str, float, float]] = {
    "NW-PLAT-STD": ("Northwind Platform Standard (annual)", "Software",
                    "Subscription, 25 named users, standard SLA", 12000.0, 13000.0),
    "NW-PLAT-ENT": ("Northwind Platform Enterprise (annual)", "Software",
                    "Subscription, 100 named users, sandbox, 99.9 % SLA", 36000.0, 39000.0),
    "NW-USR-10": ("Additional User Pack (10 users, annual)", "Software", "Ten further named users", 1500.0,
                  1650.0),
    "NW-API": ("API Add-on (annual)", "Software", "1 million API calls per month", 4800.0, 5200.0),
    "NW-SUP-PREM": ("Premium Support (annual)", "Support", "24/7, 1-hour response for severity 1", 6000.0,
                    6500.0),
    "NW-ONB-DAY": ("Onboarding Workshop (per day)", "Services", "On-site or remote, up to 12 participants",
                   1400.0, 1500.0),
    "NW-MIG": ("Data Migration Service", "Services", "Fixed-price migration of up to 5 million records", 9500.0,
               10300.0),
    "NW-TRN-ADM": ("Administrator Training (per seat)", "Services", "Two-day certification course", 450.0,
                   490.0),
}

ACCOUNTS: dict[str, dict[str, Any]] = {
    "acme-fr": {"Name": "Acme Industries SAS", "BillingStreet": "12 Rue de la Paix", "BillingCity": "Paris",
                "BillingPostalCode": "75002", "BillingState": "Île-de-France", "BillingCountry": "France",
                "Phone": "+33 1 42 68 53 00", "Website": "https://www.acme-industries.example",
                "Industry": "Manufacturing", "Type": "Customer - Direct", "CurrencyIsoCode": "EUR",
                "_owner": "marc"},
    "brandt-de": {"Name": "Brandt & Söhne Maschinenbau GmbH", "BillingStreet": "Königstraße 28",
                  "BillingCity": "Stuttgart", "BillingPostalCode": "70173", "BillingState": "Baden-Württemberg",
                  "BillingCountry": "Germany", "Phone": "+49 711 555 4400", "Website": "https://www.brandt-soehne.example",
                  "Industry": "Machinery", "Type": "Customer - Direct", "CurrencyIsoCode": "EUR", "_owner": "lena"},
    "globex-us": {"Name": "Globex Corporation", "BillingStreet": "350 Mission Street, Suite 400",
                  "BillingCity": "San Francisco", "BillingPostalCode": "94105", "BillingState": "CA",
                  "BillingCountry": "United States", "Phone": "+1 415 555 0199", "Website": "https://www.globex.example",
                  "Industry": "Technology", "Type": "Prospect", "CurrencyIsoCode": "USD", "_owner": "emily"},
    "initech-uk": {"Name": "Initech Ltd", "BillingStreet": "22 Bishopsgate", "BillingCity": "London",
                   "BillingPostalCode": "EC2N 4BQ", "BillingCountry": "United Kingdom", "Phone": "+44 20 7946 0321",
                   "Website": "https://www.initech.example", "Industry": "Finance", "Type": "Prospect",
                   "CurrencyIsoCode": "EUR", "_owner": "emily"},
    "lumiere-fr": {"Name": "Lumière Santé SA", "BillingStreet": "8 Quai Perrache", "BillingCity": "Lyon",
                   "BillingPostalCode": "69002", "BillingState": "Auvergne-Rhône-Alpes", "BillingCountry": "France",
                   "Phone": "+33 4 72 55 18 90", "Website": "https://www.lumiere-sante.example",
                   "Industry": "Healthcare", "Type": "Prospect", "CurrencyIsoCode": "EUR", "_owner": "marc"},
    "hanse-de": {"Name": "Hanse Logistik AG", "BillingStreet": "Am Sandtorkai 50", "BillingCity": "Hamburg",
                 "BillingPostalCode": "20457", "BillingState": "Hamburg", "BillingCountry": "Germany",
                 "Phone": "+49 40 555 7300", "Website": "https://www.hanse-logistik.example",
                 "Industry": "Transportation", "Type": "Customer - Channel", "CurrencyIsoCode": "EUR",
                 "_owner": "lena"},
}

CONTACTS: dict[str, dict[str, Any]] = {
    "acme-claire": {"_account": "acme-fr", "Salutation": "Ms.", "FirstName": "Claire", "LastName": "Lefèvre",
                    "Title": "Directrice des achats", "Email": "claire.lefevre@acme-industries.example",
                    "Phone": "+33 1 42 68 53 10"},
    "acme-thomas": {"_account": "acme-fr", "Salutation": "Mr.", "FirstName": "Thomas", "LastName": "Moreau",
                    "Title": "DSI", "Email": "thomas.moreau@acme-industries.example", "Phone": "+33 1 42 68 53 22"},
    "brandt-juergen": {"_account": "brandt-de", "Salutation": "Mr.", "FirstName": "Jürgen", "LastName": "Brandt",
                       "Title": "Geschäftsführer", "Email": "j.brandt@brandt-soehne.example",
                       "Phone": "+49 711 555 4401"},
    "brandt-sabine": {"_account": "brandt-de", "Salutation": "Ms.", "FirstName": "Sabine", "LastName": "Krüger",
                      "Title": "Leiterin IT", "Email": "s.krueger@brandt-soehne.example",
                      "Phone": "+49 711 555 4420"},
    "globex-hank": {"_account": "globex-us", "Salutation": "Mr.", "FirstName": "Hank", "LastName": "Scorpio",
                    "Title": "Chief Executive Officer", "Email": "hank.scorpio@globex.example",
                    "Phone": "+1 415 555 0100"},
    "globex-maria": {"_account": "globex-us", "Salutation": "Ms.", "FirstName": "Maria", "LastName": "Gonzalez",
                     "Title": "VP Procurement", "Email": "maria.gonzalez@globex.example", "Phone": "+1 415 555 0142"},
    "initech-peter": {"_account": "initech-uk", "Salutation": "Mr.", "FirstName": "Peter", "LastName": "Gibbons",
                      "Title": "Head of Operations", "Email": "peter.gibbons@initech.example",
                      "Phone": "+44 20 7946 0330"},
    "lumiere-amelie": {"_account": "lumiere-fr", "Salutation": "Dr.", "FirstName": "Amélie", "LastName": "Garnier",
                       "Title": "Directrice médicale", "Email": "amelie.garnier@lumiere-sante.example",
                       "Phone": "+33 4 72 55 18 91"},
    "hanse-ole": {"_account": "hanse-de", "Salutation": "Mr.", "FirstName": "Ole", "LastName": "Petersen",
                  "Title": "Vorstand Finanzen", "Email": "o.petersen@hanse-logistik.example",
                  "Phone": "+49 40 555 7301"},
}

# key: (account, name, stage, close date, currency, description, [(product, qty, discount%, unit price
# override or None)], [(contact, role, primary)])
OPPORTUNITIES: dict[str, tuple[str, str, str, str, str, str, list[tuple[str, float, float, float | None]],
                               list[tuple[str, str, bool]]]] = {
    "acme-renewal": ("acme-fr", "Acme Industries - Platform Renewal 2027", "Value Proposition", "2026-12-18", "EUR",
                     "Renewal of the Standard platform with more users and premium support.",
                     [("NW-PLAT-STD", 1, 0, None), ("NW-USR-10", 3, 10, None), ("NW-SUP-PREM", 1, 5, None)],
                     [("acme-claire", "Economic Buyer", True), ("acme-thomas", "Technical Buyer", False)]),
    "acme-api": ("acme-fr", "Acme Industries - API Add-on", "Qualification", "2027-01-29", "EUR",
                 "Connect the shop-floor MES to the platform.",
                 [("NW-API", 1, 0, None), ("NW-ONB-DAY", 2, 0, None)],
                 [("acme-thomas", "Decision Maker", True)]),
    "brandt-enterprise": ("brandt-de", "Brandt & Söhne - Enterprise Upgrade", "Needs Analysis", "2027-02-26", "EUR",
                          "Upgrade from Standard to Enterprise including migration and admin training.",
                          [("NW-PLAT-ENT", 1, 12.5, None), ("NW-USR-10", 5, 10, None), ("NW-MIG", 1, 0, None),
                           ("NW-TRN-ADM", 4, 0, None), ("NW-ONB-DAY", 3, 0, 1250.0)],
                          [("brandt-juergen", "Economic Decision Maker", True),
                           ("brandt-sabine", "Evaluator", False)]),
    "brandt-support": ("brandt-de", "Brandt & Söhne - Premium Support", "Id. Decision Makers", "2026-12-31",
                       "EUR", "Premium support for the production plants.",
                       [("NW-SUP-PREM", 1, 0, None), ("NW-ONB-DAY", 1, 0, None)],
                       [("brandt-sabine", "Decision Maker", True)]),
    "globex-rollout": ("globex-us", "Globex - Enterprise Rollout", "Needs Analysis", "2027-03-31", "USD",
                       "Company-wide rollout, 600 users, phased over two quarters.",
                       [("NW-PLAT-ENT", 1, 15, None), ("NW-USR-10", 50, 20, None), ("NW-API", 2, 10, None),
                        ("NW-SUP-PREM", 1, 0, None), ("NW-MIG", 1, 5, None), ("NW-TRN-ADM", 12, 0, None)],
                       [("globex-maria", "Economic Buyer", True), ("globex-hank", "Executive Sponsor", False)]),
    "initech-onboarding": ("initech-uk", "Initech - Onboarding Package", "Prospecting", "2027-01-15", "EUR",
                           "Standard platform with a three-day onboarding.",
                           [("NW-PLAT-STD", 1, 0, None), ("NW-ONB-DAY", 3, 0, None)],
                           [("initech-peter", "Decision Maker", True)]),
    "lumiere-pilot": ("lumiere-fr", "Lumière Santé - Pilot", "Qualification", "2027-02-12", "EUR",
                      "Six-month pilot in two clinics. No contact role yet.",
                      [("NW-PLAT-STD", 1, 50, None), ("NW-ONB-DAY", 2, 0, None), ("NW-TRN-ADM", 2, 0, None)],
                      []),
    "hanse-migration": ("hanse-de", "Hanse Logistik - Data Migration", "Needs Analysis", "2027-03-15", "EUR",
                        "Migration from the legacy CRM; products not chosen yet.",
                        [],
                        [("hanse-ole", "Economic Buyer", True)]),
}

# key: (opportunity, name, contact, expiration date, tax)
QUOTES: dict[str, tuple[str, str, str, str, float]] = {
    "acme-renewal-q1": ("acme-renewal", "Acme Renewal 2027 - Offer", "acme-claire", "2026-12-31", 0.0),
    "brandt-enterprise-q1": ("brandt-enterprise", "Enterprise Upgrade - Angebot", "brandt-juergen", "2027-01-31",
                             0.0),
    "globex-rollout-q1": ("globex-rollout", "Globex Enterprise Rollout - Proposal", "globex-maria", "2027-01-15",
                          0.0),
}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def seed_org(store: OrgStore) -> SeedInfo:
    """Fill an empty store with the demo org (no change or platform events are emitted)."""
    org_rec = store.record(store.org_id)
    assert org_rec is not None
    info = SeedInfo(org_id=store.org_id, integration_username=INTEGRATION_USERNAME, integration_user_id="",
                    rep_username=USERS["lena"]["Username"], standard_pricebook_id=store.standard_pricebook_id)
    with store.transaction(user_id="", system=True, emit=False) as txn:
        info.currencies["EUR"] = txn.insert("CurrencyType", {"IsoCode": "EUR", "ConversionRate": 1.0,
                                                             "DecimalPlaces": 2, "IsActive": True,
                                                             "IsCorporate": True})
        info.currencies["USD"] = txn.insert("CurrencyType", {"IsoCode": "USD", "ConversionRate": 1.08,
                                                             "DecimalPlaces": 2, "IsActive": True})
        for key, values in USERS.items():
            info.users[key] = txn.insert("User", {**_USER_DEFAULTS, **values})
            info.usernames[key] = values["Username"]
        info.integration_user_id = info.users["integration"]
        txn.update("Organization", store.org_id, {
            "Name": "Northwind Cloud GmbH", "Street": "Friedrichstraße 68", "City": "Berlin",
            "PostalCode": "10117", "Country": "Germany", "Phone": "+49 30 5557 1000",
            "DefaultLocaleSidKey": "de_DE", "LanguageLocaleKey": "de", "TimeZoneSidKey": "Europe/Berlin"})
    admin = info.users["emily"]
    for rec in [*store.iter_records("User"), org_rec, *store.iter_records("CurrencyType"),
                *store.iter_records("Pricebook2")]:
        rec["CreatedById"] = rec["CreatedById"] or admin
        rec["LastModifiedById"] = rec["LastModifiedById"] or admin

    with store.transaction(user_id=admin, system=True, emit=False) as txn:
        for code, (name, family, description, eur, usd) in PRODUCTS.items():
            product = txn.insert("Product2", {"Name": name, "ProductCode": code, "Family": family,
                                              "Description": description, "IsActive": True,
                                              "QuantityUnitOfMeasure": "Each"})
            info.products[code] = product
            for iso, price in (("EUR", eur), ("USD", usd)):
                info.pricebook_entries[f"{code}/{iso}"] = txn.insert("PricebookEntry", {
                    "Pricebook2Id": store.standard_pricebook_id, "Product2Id": product, "UnitPrice": price,
                    "CurrencyIsoCode": iso, "IsActive": True})

    for key, values in ACCOUNTS.items():
        owner = info.users[values["_owner"]]
        with store.transaction(user_id=owner, system=True, emit=False) as txn:
            info.accounts[key] = txn.insert("Account", {**_plain(values), "OwnerId": owner})
            for ckey, cvalues in CONTACTS.items():
                if cvalues["_account"] == key:
                    info.contacts[ckey] = txn.insert("Contact", {
                        **_plain(cvalues), "AccountId": info.accounts[key], "OwnerId": owner,
                        "CurrencyIsoCode": values["CurrencyIsoCode"],
                        "MailingStreet": values["BillingStreet"], "MailingCity": values["BillingCity"],
                        "MailingPostalCode": values["BillingPostalCode"], "MailingCountry": values["BillingCountry"]})

    for key, (acc, name, stage, close, iso, description, lines, roles) in OPPORTUNITIES.items():
        owner = info.users[ACCOUNTS[acc]["_owner"]]
        with store.transaction(user_id=owner, system=True, emit=False) as txn:
            opp = txn.insert("Opportunity", {
                "Name": name, "AccountId": info.accounts[acc], "StageName": stage, "CloseDate": close,
                "CurrencyIsoCode": iso, "Description": description, "OwnerId": owner, "Type": "New Customer"
                if ACCOUNTS[acc]["Type"] == "Prospect" else "Existing Customer - Upgrade",
                "LeadSource": "Partner Referral" if iso == "USD" else "Web",
                "Pricebook2Id": store.standard_pricebook_id})
            info.opportunities[key] = opp
            _add_lines(txn, info, "OpportunityLineItem", "OpportunityId", opp, iso, lines)
            for contact, role, primary in roles:
                txn.insert("OpportunityContactRole", {"OpportunityId": opp, "ContactId": info.contacts[contact],
                                                      "Role": role, "IsPrimary": primary})

    for key, (opp_key, name, contact, expires, tax) in QUOTES.items():
        acc, _, _, _, iso, _, lines, _ = OPPORTUNITIES[opp_key]
        account = ACCOUNTS[acc]
        owner = info.users[account["_owner"]]
        contact_values = CONTACTS[contact]
        with store.transaction(user_id=owner, system=True, emit=False) as txn:
            quote = txn.insert("Quote", {
                "Name": name, "OpportunityId": info.opportunities[opp_key], "Status": "Draft",
                "ExpirationDate": expires, "ContactId": info.contacts[contact], "Email": contact_values["Email"],
                "Phone": contact_values["Phone"], "BillingName": account["Name"],
                "BillingStreet": account["BillingStreet"], "BillingCity": account["BillingCity"],
                "BillingPostalCode": account["BillingPostalCode"], "BillingState": account.get("BillingState"),
                "BillingCountry": account["BillingCountry"], "Tax": tax, "ShippingHandling": 0.0,
                "Description": "Prices valid until the expiration date. Payment within 30 days of invoice."})
            info.quotes[key] = quote
            _add_lines(txn, info, "QuoteLineItem", "QuoteId", quote, iso, lines)
    return info


def _add_lines(txn: Txn, info: SeedInfo, sobject: str, parent_field: str, parent_id: str, iso: str,
               lines: list[tuple[str, float, float, float | None]]) -> None:
    for n, (code, quantity, discount, price) in enumerate(lines, start=1):
        pbe = info.pricebook_entries[f"{code}/{iso}"]
        list_price = PRODUCTS[code][3 if iso == "EUR" else 4]
        values: dict[str, Any] = {parent_field: parent_id, "PricebookEntryId": pbe, "Quantity": quantity,
                                  "UnitPrice": price if price is not None else list_price, "SortOrder": n,
                                  "Description": PRODUCTS[code][2]}
        if discount:
            values["Discount"] = discount
        txn.insert(sobject, values)
