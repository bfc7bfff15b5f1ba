"""Realistic mess: the odd values every real portal holds, at a rate (`Sandbox(mess=0.005)`).

Real CRMs are never clean: people type two addresses into one e-mail field, companies have
internationalised domains (HubSpot keeps them in Unicode, Salesforce's Website often in punycode),
a deal synced from Salesforce carries the 15-character opportunity id someone pasted, a deal is
closed without a close date. None of it makes a record unusable, so a pipeline must keep such
records as received, say what is odd, and still link and count them right.

`apply` draws the mess from its own seed (`<seed>:mess`), after the data set is generated, so the
data without mess is the same as before and a test sees the mess in the ground truth (`truth()`
of each service holds the values as now served). At least one record of each kind is messed when
the rate is above zero, so a small sandbox shows every kind. What was done is returned, one row
per changed value: `system`, `table`, `id`, `field`, `kind`, `value`.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import polars as pl

from revenue_pipelines.sandbox.hubspot_data import CLOSED_STAGES

if TYPE_CHECKING:
    from revenue_pipelines.sandbox.hubspot import HubSpot
    from revenue_pipelines.sandbox.salesforce import Salesforce

MESS_SCHEMA = {
    "system": pl.Utf8,
    "table": pl.Utf8,
    "id": pl.Utf8,
    "field": pl.Utf8,
    "kind": pl.Utf8,
    "value": pl.Utf8,
}
# Company names as people in other scripts write them; each becomes a Unicode domain.
IDN_STEMS = ("müller-werkzeuge", "bücherstube", "café-lumière", "почта-сервис", "ελληνικά-τρόφιμα", "東京商事")
IDN_TLDS = ("de", "de", "fr", "рф", "gr", "jp")
# E-mail fields as people fill them in: broken ones (soft rules flag them) and legitimate oddities.
BROKEN_EMAILS = ("{local}.{domain}", "{local}@{domain}; {local}@gmail.com", "{local}@{stem}")
LEGITIMATE_EMAILS = ("{Local}+crm@{Domain}",)
BROKEN_PHONES = ("n/a", "call reception")


def apply(hubspot: HubSpot, salesforce: Salesforce, seed: int, rate: float) -> pl.DataFrame:
    """Mess up about `rate` of the records of each kind (at least one); returns what changed."""
    if not 0 <= rate <= 1:
        raise ValueError("mess must be a share between 0 and 1")
    if rate == 0:
        return pl.DataFrame(schema=MESS_SCHEMA)
    rng = random.Random(f"{seed}:mess")
    changes = [
        *_contacts(hubspot, rng, rate),
        *_domains(hubspot, salesforce, rng, rate),
        *_deals(hubspot, rng, rate),
    ]
    return pl.DataFrame(changes, schema=MESS_SCHEMA, orient="row")


def _pick(rng: random.Random, ids: list, rate: float) -> list:
    return sorted(rng.sample(ids, min(len(ids), math.ceil(len(ids) * rate))))


def _contacts(hubspot: HubSpot, rng: random.Random, rate: float) -> list[tuple]:
    """Broken e-mails (no @, two addresses, no top-level domain), mixed-case plus-addresses
    (legitimate), and phone fields holding words."""
    contacts = hubspot.truth("contacts").filter(pl.col("email").str.contains("@"))
    emails = dict(zip(contacts["id"], contacts["email"], strict=True))
    broken = _pick(rng, list(emails), rate)
    legitimate = _pick(rng, sorted(set(emails) - set(broken)), rate)
    phones = _pick(rng, hubspot.truth("contacts")["id"].to_list(), rate)
    changes: list[tuple] = []
    new_emails: dict[int, str] = {}
    for index, record in enumerate(broken):
        local, domain = emails[record].split("@")
        value = BROKEN_EMAILS[index % len(BROKEN_EMAILS)].format(
            local=local, domain=domain, stem=domain.rsplit(".", 1)[0]
        )
        new_emails[record] = value
        changes.append(("hubspot", "contacts", str(record), "email", "broken_email", value))
    for record in legitimate:
        local, domain = emails[record].split("@")
        value = LEGITIMATE_EMAILS[0].format(Local=local.title(), Domain=domain.capitalize())
        new_emails[record] = value
        changes.append(("hubspot", "contacts", str(record), "email", "plus_address", value))
    new_phones = {record: BROKEN_PHONES[index % len(BROKEN_PHONES)] for index, record in enumerate(phones)}
    changes += [
        ("hubspot", "contacts", str(record), "phone", "word_phone", value) for record, value in new_phones.items()
    ]
    hubspot.set_values("contacts", "email", new_emails)
    hubspot.set_values("contacts", "phone", new_phones)
    return changes


def _domains(hubspot: HubSpot, salesforce: Salesforce, rng: random.Random, rate: float) -> list[tuple]:
    """Companies with internationalised domains: in Unicode (one in capitals) in HubSpot and, where
    the company is a Salesforce account too, in punycode on the account's Website. Accounts that
    carry no HubSpot id are picked first, so only the domain can link them."""
    accounts = salesforce.truth("Account").select("Id", "External_Account_Id__c")
    overlap = salesforce.truth_overlap().join(accounts, left_on="account_id", right_on="Id")
    by_domain_only = overlap.filter(
        pl.col("External_Account_Id__c").is_null()
        | (pl.col("External_Account_Id__c") != pl.col("hubspot_company_id").cast(pl.Utf8))
    )
    companies = hubspot.truth("companies").filter(~pl.col("archived") & pl.col("domain").is_not_null())["id"].to_list()
    count = min(len(companies), math.ceil(len(companies) * rate))
    live = set(companies)
    preferred = sorted(c for c in by_domain_only["hubspot_company_id"].to_list() if c in live)
    chosen = sorted(rng.sample(preferred, min(count, len(preferred))))
    rest = sorted(live - set(chosen))
    chosen += sorted(rng.sample(rest, count - len(chosen)))
    account_of = dict(zip(overlap["hubspot_company_id"], overlap["account_id"], strict=True))
    changes: list[tuple] = []
    domains: dict[int, str] = {}
    websites: dict[str, str] = {}
    for index, company in enumerate(chosen):
        stem, tld = IDN_STEMS[index % len(IDN_STEMS)], IDN_TLDS[index % len(IDN_TLDS)]
        domain = f"{stem}-{index + 1}.{tld}"
        domains[company] = domain.upper() if index == 1 else domain
        changes.append(("hubspot", "companies", str(company), "domain", "idn_domain", domains[company]))
        if company in account_of:
            website = f"https://www.{domain.encode('idna').decode('ascii')}"
            websites[account_of[company]] = website
            changes.append(("salesforce", "Account", account_of[company], "Website", "punycode_website", website))
    hubspot.set_values("companies", "domain", domains)
    salesforce.set_values("Account", "Website", websites)
    return changes


def _deals(hubspot: HubSpot, rng: random.Random, rate: float) -> list[tuple]:
    """Deals synced from Salesforce that carry the 15-character opportunity id, and HubSpot's own
    closed deals without a close date."""
    deals = hubspot.truth("deals")
    synced = deals.filter(pl.col("hs_salesforceopportunityid").is_not_null())
    opportunity_of = dict(zip(synced["id"], synced["hs_salesforceopportunityid"], strict=True))
    short = {record: opportunity_of[record][:15] for record in _pick(rng, list(opportunity_of), rate)}
    closed = deals.filter(
        pl.col("hs_salesforceopportunityid").is_null()
        & pl.col("dealstage").is_in(list(CLOSED_STAGES))
        & pl.col("closedate").is_not_null()
    )["id"].to_list()
    undated = {record: None for record in _pick(rng, closed, rate)}
    hubspot.set_values("deals", "hs_salesforceopportunityid", short)
    hubspot.set_values("deals", "closedate", undated)
    return [
        *(
            ("hubspot", "deals", str(r), "hs_salesforceopportunityid", "short_salesforce_id", v)
            for r, v in short.items()
        ),
        *(("hubspot", "deals", str(record), "closedate", "closed_without_close_date", None) for record in undated),
    ]
