"""The synthetic Salesforce org: accounts, opportunities, contacts, leads and users.

A pure function of the seed, the sizes and the HubSpot portal's companies: about 60% of the
accounts are HubSpot companies (same domain, the name sometimes spelled differently), so
resolving identities across the two sources has real overlap, and a ground truth to meet.
Values are drawn in bulk with `Draws` and assembled column by column, as in hubspot_data, so
500,000 opportunities take seconds. Each object is one DataFrame sorted by Id whose columns are
exactly its fields, typed as `Field.dtype` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from functools import partial

import polars as pl

from revenue_pipelines.sandbox.hubspot_data import (
    CITIES,
    CURRENCIES,
    CURRENCY_WEIGHTS,
    DAY_MS,
    DEAL_PRODUCTS,
    FIRST_NAMES,
    JOB_TITLES,
    LAST_NAMES,
    TLDS,
    UTC_MS,
    Draws,
    blank,
    climbing_ids,
    company_domains,
    company_names,
    company_size,
    draw_lifecycle,
    modification_window,
    timestamps,
    work_emails,
)

OBJECT_NAMES = ("Account", "Opportunity", "Contact", "Lead", "User")
KEY_PREFIXES = {"Account": "001", "Opportunity": "006", "Contact": "003", "Lead": "00Q", "User": "005"}
ORG_ID = "00DDn000001Rv7QMAS"
INSTANCE = "Dn0"  # the pod (2 characters) and reserved character of every id of the org
FIRST_COUNTER = 1_000_000_000  # record counters then climb in creation order, like HubSpot's ids
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHECKSUM_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3f+0000"

# Standard opportunity stages and their default probability (%); the last two are closed.
STAGES = {
    "Prospecting": 10,
    "Qualification": 10,
    "Needs Analysis": 20,
    "Value Proposition": 50,
    "Id. Decision Makers": 60,
    "Perception Analysis": 70,
    "Proposal/Price Quote": 75,
    "Negotiation/Review": 90,
    "Closed Won": 100,
    "Closed Lost": 0,
}
STAGE_WEIGHTS = (8, 8, 7, 7, 6, 5, 6, 5, 28, 20)
CLOSED_STAGES = ("Closed Won", "Closed Lost")
# Lead sources line up with HubSpot's original traffic sources (DIRECT_TRAFFIC ~ Web, ORGANIC_SEARCH,
# PAID_SEARCH, EMAIL_MARKETING, SOCIAL_MEDIA, REFERRALS ~ Partner Referral), plus offline trade shows.
LEAD_SOURCES = ("Web", "Organic Search", "Paid Search", "Email", "Social", "Partner Referral", "Trade Show")
LEAD_SOURCE_WEIGHTS = (15, 25, 18, 12, 10, 8, 5, 7)  # the last: no source recorded
LEAD_STATUSES = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted")
LEAD_STATUS_WEIGHTS = (30, 30, 20, 20)
ACCOUNT_TYPES = ("Prospect", "Customer - Direct", "Customer - Channel", "Partner", "Other")
ACCOUNT_TYPE_WEIGHTS = (35, 35, 12, 10, 8)
INDUSTRIES = (
    "Technology", "Transportation", "Healthcare", "Finance", "Media", "Retail", "Food & Beverage",
    "Manufacturing", "Energy", "Education", "Consulting", "Telecommunications",
)  # fmt: skip
OPPORTUNITY_TYPES = (
    "New Customer", "Existing Customer - Upgrade", "Existing Customer - Replacement", "Existing Customer - Downgrade",
)  # fmt: skip
# How a shared account's Name spells the HubSpot company's ("Acme Foods" -> ...; {upper}: in capitals).
NAME_SPELLINGS = ("{}", "{} Inc.", "{upper}", "{}, LLC")
NAME_SPELLING_WEIGHTS = (55, 15, 15, 15)
WEBSITE_PREFIXES = ("https://www.", "www.", "")
USER_DOMAIN = "revenue-org.example"
BULK_JOBS_PER_DAY = 4
BULK_SHARE = 0.2  # of each object's records last changed by a bulk job
OPEN_CLOSE_DAYS = 120  # open opportunities expect to close within this many days after the window


@dataclass(frozen=True)
class Field:
    """A field as describe reports it; `type` is Salesforce's field type."""

    name: str
    label: str
    type: str
    nillable: bool = True
    reference_to: tuple[str, ...] = ()
    picklist: tuple[str, ...] = ()
    external_id: bool = False

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    @property
    def length(self) -> int:
        return {"id": 18, "reference": 18, "email": 80, "phone": 40}.get(self.type, 255 if self.is_text else 0)

    @property
    def is_text(self) -> bool:
        return self.type in ("id", "reference", "string", "picklist", "url", "email", "phone")

    @property
    def dtype(self) -> pl.DataType:
        """How the column holds the field: text types as String."""
        return DTYPES.get(self.type, pl.String())


DTYPES: dict[str, pl.DataType] = {
    "boolean": pl.Boolean(),
    "currency": pl.Float64(),
    "double": pl.Float64(),
    "percent": pl.Float64(),
    "int": pl.Int64(),
    "date": pl.Date(),
    "datetime": UTC_MS,
}
_required = partial(Field, nillable=False)


def _picklist(name: str, label: str, values: tuple[str, ...]) -> Field:
    return Field(name, label, "picklist", picklist=values)


def _head(label: str) -> tuple[Field, ...]:
    return _required("Id", f"{label} ID", "id"), _required("IsDeleted", "Deleted", "boolean")


OWNER = _required("OwnerId", "Owner ID", "reference", reference_to=("User",))
AUDIT = (
    _required("CreatedDate", "Created Date", "datetime"),
    _required("LastModifiedDate", "Last Modified Date", "datetime"),
    _required("SystemModstamp", "System Modstamp", "datetime"),
)
LEAD_SOURCE = _picklist("LeadSource", "Lead Source", LEAD_SOURCES)
SCHEMAS: dict[str, tuple[Field, ...]] = {
    "Account": (
        *_head("Account"),
        _required("Name", "Account Name", "string"),
        _picklist("Type", "Account Type", ACCOUNT_TYPES),
        _picklist("Industry", "Industry", INDUSTRIES),
        Field("Website", "Website", "url"),
        Field("BillingCity", "Billing City", "string"),
        Field("BillingCountry", "Billing Country", "string"),
        Field("AnnualRevenue", "Annual Revenue", "currency"),
        Field("NumberOfEmployees", "Employees", "int"),
        Field("External_Account_Id__c", "External Account ID", "string", external_id=True),
        OWNER,
        *AUDIT,
    ),
    "Opportunity": (
        *_head("Opportunity"),
        Field("AccountId", "Account ID", "reference", reference_to=("Account",)),
        _required("Name", "Name", "string"),
        _required("StageName", "Stage", "picklist", picklist=tuple(STAGES)),
        Field("Amount", "Amount", "currency"),
        _picklist("CurrencyIsoCode", "Opportunity Currency", CURRENCIES),
        _required("CloseDate", "Close Date", "date"),
        _required("IsClosed", "Closed", "boolean"),
        _required("IsWon", "Won", "boolean"),
        Field("Probability", "Probability (%)", "percent"),
        _picklist("Type", "Opportunity Type", OPPORTUNITY_TYPES),
        LEAD_SOURCE,
        OWNER,
        *AUDIT,
    ),
    "Contact": (
        *_head("Contact"),
        Field("AccountId", "Account ID", "reference", reference_to=("Account",)),
        Field("FirstName", "First Name", "string"),
        _required("LastName", "Last Name", "string"),
        Field("Email", "Email", "email"),
        Field("Title", "Title", "string"),
        Field("Phone", "Business Phone", "phone"),
        LEAD_SOURCE,
        OWNER,
        *AUDIT,
    ),
    "Lead": (
        *_head("Lead"),
        Field("FirstName", "First Name", "string"),
        _required("LastName", "Last Name", "string"),
        Field("Email", "Email", "email"),
        _required("Company", "Company", "string"),
        _required("Status", "Lead Status", "picklist", picklist=LEAD_STATUSES),
        LEAD_SOURCE,
        _required("IsConverted", "Converted", "boolean"),
        Field("ConvertedAccountId", "Converted Account ID", "reference", reference_to=("Account",)),
        Field("ConvertedContactId", "Converted Contact ID", "reference", reference_to=("Contact",)),
        Field("ConvertedOpportunityId", "Converted Opportunity ID", "reference", reference_to=("Opportunity",)),
        OWNER,
        *AUDIT,
    ),
    # Users are deactivated, never deleted: Salesforce's User has no IsDeleted (and no owner).
    "User": (
        _required("Id", "User ID", "id"),
        _required("Username", "Username", "string"),
        _required("Name", "Full Name", "string"),
        _required("Email", "Email", "email"),
        _required("IsActive", "Active", "boolean"),
        _required("UserType", "User Type", "picklist", picklist=("Standard",)),
        *AUDIT,
    ),
}


@dataclass(frozen=True)
class Org:
    tables: dict[str, pl.DataFrame]
    overlap: pl.DataFrame  # account_id, hubspot_company_id: the accounts that are HubSpot companies
    window: tuple[datetime, datetime]  # modifications fall in [start, end)


def salesforce_ids(prefix: str, counters: pl.Series) -> pl.Series:
    """18-character ids: key prefix, instance, the counter in 9 base-62 digits, then the case-safe
    checksum: for each 5-character chunk, bit i is set if its i-th character is an uppercase letter,
    and the 5-bit value picks one of A-Z, 0-5."""
    digits = [(pl.col("counter") // 62**power) % 62 for power in reversed(range(9))]
    head = prefix + INSTANCE
    uppercase = [pl.lit(char.isupper()) for char in head] + [digit.is_between(10, 35) for digit in digits]
    checksum = [
        pl.lit(CHECKSUM_CHARACTERS).str.slice(
            pl.sum_horizontal(uppercase[5 * chunk + bit].cast(pl.Int64) * (1 << bit) for bit in range(5)), 1
        )
        for chunk in range(3)
    ]
    characters = [pl.lit(BASE62).str.slice(digit, 1) for digit in digits]
    ids = pl.DataFrame({"counter": counters}).select(pl.concat_str(pl.lit(head), *characters, *checksum))
    return ids.to_series().rename("Id")


def generate_org(
    seed: int, companies: pl.DataFrame, opportunities: int | None, days: int, end_date: date | None
) -> Org:
    """The org for the HubSpot `companies` (id, name, domain): as many accounts as companies."""
    counts = {
        "Account": companies.height,
        "Opportunity": 3 * companies.height if opportunities is None else opportunities,
        "Contact": 4 * companies.height,
        "Lead": 3 * companies.height,
        "User": 25,
    }
    if counts["Account"] < 1 or counts["Opportunity"] < 0:
        raise ValueError("need at least one company and no negative counts")
    window = modification_window(days, end_date)
    draws = Draws(f"{seed}:salesforce")
    stamps = {name: _stamps(draws, counts[name], window) for name in OBJECT_NAMES}
    ids = {
        name: salesforce_ids(KEY_PREFIXES[name], climbing_ids(draws, FIRST_COUNTER, stamps[name]["CreatedDate"]))
        for name in OBJECT_NAMES
    }
    account, hubspot_id = _accounts(draws, companies)
    contact = _contacts(draws, counts["Contact"], account, ids)
    opportunity = _opportunities(draws, counts["Opportunity"], account, stamps["Opportunity"], window[1], ids)
    fields = {
        "Account": account,
        "Contact": contact,
        "Opportunity": opportunity,
        "Lead": _leads(draws, counts["Lead"], account, contact, opportunity, ids),
        "User": _users(draws, counts["User"], deactivated=stamps["User"]["IsDeleted"]),
    }
    tables = {}
    for name in OBJECT_NAMES:
        owners = {"OwnerId": ids["User"].gather(draws.below(counts["User"], counts[name]))} if name != "User" else {}
        columns = {**fields[name], **stamps[name], **owners, "Id": ids[name]}
        tables[name] = pl.DataFrame(
            [columns[field.name].cast(field.dtype).alias(field.name) for field in SCHEMAS[name]]
        )
    overlap = pl.DataFrame({"account_id": ids["Account"], "hubspot_company_id": hubspot_id}).drop_nulls()
    return Org({name: table.sort("Id") for name, table in tables.items()}, overlap.sort("account_id"), window)


def _stamps(draws: Draws, n: int, window: tuple[datetime, datetime]) -> dict[str, pl.Series]:
    """CreatedDate, LastModifiedDate, SystemModstamp and IsDeleted of `n` records.

    As HubSpot's lifecycle: the last change is uniform over the window and 3-5% of records are
    deleted after their last edit (SystemModstamp is the deletion). About 20% were last changed by a
    bulk job: their SystemModstamp (and LastModifiedDate, unless deleted) moves forward to the job's
    run, one of a few a day, so many records share one instant to the millisecond. Some others had a
    system-only change after their last edit, so SystemModstamp > LastModifiedDate.
    """
    start_ms, end_ms = (int(bound.timestamp() * 1000) for bound in window)
    life = draw_lifecycle(draws, n, start_ms, end_ms)
    created, edited, deleted_at = life["created"], life["updated"], life["archived_at"]
    job_day = pl.int_range(0, (end_ms - start_ms) // DAY_MS * BULK_JOBS_PER_DAY, eager=True) // BULK_JOBS_PER_DAY
    jobs = (start_ms + job_day * DAY_MS + (draws.uniform(len(job_day)) * DAY_MS).floor().cast(pl.Int64)).sort()
    changed = deleted_at.fill_null(edited)
    next_job = jobs.search_sorted(changed, side="left")
    bulk = (draws.uniform(n) < BULK_SHARE) & (next_job < len(jobs))
    job_at = jobs.gather(next_job.clip(upper_bound=len(jobs) - 1))
    modstamp = pl.select(pl.when(bulk).then(job_at).otherwise(changed)).to_series()
    system_only = (draws.uniform(n) < 0.15) * draws.uniform(n) * (edited - created).clip(upper_bound=DAY_MS)
    deleted = deleted_at.is_not_null()
    last_modified = pl.select(
        pl.when(deleted).then(edited).when(bulk).then(modstamp).otherwise(edited - system_only.cast(pl.Int64))
    ).to_series()
    return {
        "CreatedDate": timestamps(created),
        "LastModifiedDate": timestamps(last_modified),
        "SystemModstamp": timestamps(modstamp),
        "IsDeleted": deleted,
    }


def _spelled(names: pl.Series, spelling: pl.Series) -> pl.Series:
    """Each name written as NAME_SPELLINGS[spelling] says."""
    written = pl.lit(None, dtype=pl.String)
    for index, pattern in enumerate(NAME_SPELLINGS):
        variant = names.str.to_uppercase() if pattern == "{upper}" else pl.format(pattern, names)
        written = pl.when(spelling == index).then(variant).otherwise(written)
    return pl.select(written).to_series()


def _accounts(draws: Draws, companies: pl.DataFrame) -> tuple[dict[str, pl.Series], pl.Series]:
    """Account fields, and the HubSpot company id of each account that is a HubSpot company.

    About 60% are HubSpot companies; the rest are companies only Salesforce knows, named like
    HubSpot's with domains of their own. The extra column `domain` feeds contacts and leads.
    """
    shared = companies.filter(draws.share(companies.height, 0.55, 0.65))
    own = companies.height - shared.height
    own_names = company_names(draws, own)
    n = companies.height
    hubspot_id = pl.concat([shared["id"], pl.repeat(None, own, dtype=pl.Int64, eager=True)])
    is_shared = hubspot_id.is_not_null()
    domains = pl.concat([shared["domain"], company_domains(own_names, draws.pick(TLDS, own), companies["name"])])
    website = pl.select(pl.format("{}{}", draws.pick(WEBSITE_PREFIXES, n), domains)).to_series()
    erp = ((draws.below(9, n) + 1).cum_sum() + 4000).cast(pl.String).str.zfill(6)
    # Shared accounts mostly carry the HubSpot id, others an ERP number or nothing; the rest never the former.
    external = pl.select(pl.when(is_shared).then(draws.index((70, 15, 15), n)).otherwise(1 + draws.below(2, n)))
    external_id = pl.select(
        pl.when(external.to_series() == 0)
        .then(hubspot_id.cast(pl.String))
        .when(external.to_series() == 1)
        .then(pl.format("ERP-{}", erp))
    ).to_series()
    place = draws.below(len(CITIES), n)
    employees, revenue = company_size(draws, n)
    fields = {
        "Name": _spelled(pl.concat([shared["name"], own_names]), draws.index(NAME_SPELLING_WEIGHTS, n) * is_shared),
        "Type": draws.pick(ACCOUNT_TYPES, n, ACCOUNT_TYPE_WEIGHTS),
        "Industry": draws.pick((*INDUSTRIES, None), n),
        "Website": blank(website, ~is_shared & (draws.uniform(n) < 0.05)),
        "BillingCity": pl.Series([city for city, _ in CITIES]).gather(place),
        "BillingCountry": pl.Series([country for _, country in CITIES]).gather(place),
        "AnnualRevenue": blank(revenue, draws.uniform(n) < 0.1),
        "NumberOfEmployees": blank(employees, draws.uniform(n) < 0.05),
        "External_Account_Id__c": external_id,
        "domain": domains,
    }
    return fields, hubspot_id


def _people(draws: Draws, n: int, domains: pl.Series, free_mail_share: float = 0.12) -> dict[str, pl.Series]:
    first, last = draws.pick(FIRST_NAMES, n), draws.pick(LAST_NAMES, n)
    return {"FirstName": first, "LastName": last, "Email": work_emails(draws, first, last, domains, free_mail_share)}


def _contacts(draws: Draws, n: int, account: dict[str, pl.Series], ids: dict[str, pl.Series]) -> dict[str, pl.Series]:
    """Contacts at random accounts (`account` holds the row), most with a mailbox at its domain."""
    at = draws.below(len(account["Name"]), n)
    phones = pl.select(pl.format("({}) 555-{}", 200 + draws.below(800, n), 1000 + draws.below(9000, n))).to_series()
    return {
        "account": at,
        "AccountId": ids["Account"].gather(at),
        **_people(draws, n, account["domain"].gather(at)),
        "Title": draws.pick(JOB_TITLES, n),
        "Phone": blank(phones, draws.uniform(n) < 0.15),
        "LeadSource": draws.pick((*LEAD_SOURCES, None), n, LEAD_SOURCE_WEIGHTS),
    }


def _opportunities(
    draws: Draws,
    n: int,
    account: dict[str, pl.Series],
    stamps: dict[str, pl.Series],
    window_end: datetime,
    ids: dict[str, pl.Series],
) -> dict[str, pl.Series]:
    """Closed opportunities closed between creation and their last edit; open ones expect to close
    within OPEN_CLOSE_DAYS after the window. Amounts are log-normal, rounded to tens."""
    at = draws.below(len(account["Name"]), n)
    stages = draws.pick(tuple(STAGES), n, STAGE_WEIGHTS)
    closed = stages.is_in(CLOSED_STAGES)
    amounts = ((9.5 + 0.9 * draws.normal(n)).exp() / 10).round() * 10
    created, edited = stamps["CreatedDate"], stamps["LastModifiedDate"]
    closed_on = (created + (edited - created) * draws.uniform(n)).dt.date()
    expected_on = pl.lit(window_end.date()) + pl.duration(days=1 + draws.below(OPEN_CLOSE_DAYS, n))
    return {
        "account": at,
        "AccountId": ids["Account"].gather(at),
        "Name": pl.select(pl.format("{} - {}", account["Name"].gather(at), draws.pick(DEAL_PRODUCTS, n))).to_series(),
        "StageName": stages,
        "Amount": blank(amounts, draws.uniform(n) < 0.04),
        "CurrencyIsoCode": draws.pick(CURRENCIES, n, CURRENCY_WEIGHTS),
        "CloseDate": pl.select(pl.when(closed).then(closed_on).otherwise(expected_on)).to_series(),
        "IsClosed": closed,
        "IsWon": stages == "Closed Won",
        "Probability": stages.replace_strict(STAGES, return_dtype=pl.Float64),
        "Type": draws.pick((*OPPORTUNITY_TYPES, None), n),
        "LeadSource": draws.pick((*LEAD_SOURCES, None), n, LEAD_SOURCE_WEIGHTS),
    }


def _leads(
    draws: Draws,
    n: int,
    account: dict[str, pl.Series],
    contact: dict[str, pl.Series],
    opportunity: dict[str, pl.Series],
    ids: dict[str, pl.Series],
) -> dict[str, pl.Series]:
    """A converted lead became a contact, whose name and email it carries, at that contact's
    account, and 70% of them that account's first opportunity too. Other leads name a random
    account's company without a link to it."""
    status = draws.pick(LEAD_STATUSES, n, LEAD_STATUS_WEIGHTS)
    converted = status == "Closed - Converted"
    became = draws.below(len(contact["LastName"]), n)
    at = pl.select(
        pl.when(converted).then(contact["account"].gather(became)).otherwise(draws.below(len(account["Name"]), n))
    ).to_series()
    person = _people(draws, n, account["domain"].gather(at))
    first_opportunity = (
        pl.DataFrame({"account": opportunity["account"]})
        .with_row_index("opportunity")
        .group_by("account")
        .agg(pl.col("opportunity").min())
    )
    with_opportunity = (
        pl.DataFrame({"account": at, "wanted": converted & (draws.uniform(n) < 0.7)})
        .join(first_opportunity, on="account", how="left", maintain_order="left")
        .select(pl.when("wanted").then("opportunity"))
        .to_series()
    )
    return {
        **{
            name: pl.select(pl.when(converted).then(contact[name].gather(became)).otherwise(drawn)).to_series()
            for name, drawn in person.items()
        },
        "Company": account["Name"].gather(at),
        "Status": status,
        "LeadSource": draws.pick((*LEAD_SOURCES, None), n, LEAD_SOURCE_WEIGHTS),
        "IsConverted": converted,
        "ConvertedAccountId": ids["Account"].gather(blank(at, ~converted)),
        "ConvertedContactId": ids["Contact"].gather(blank(became, ~converted)),
        "ConvertedOpportunityId": ids["Opportunity"].gather(with_opportunity),
    }


def _users(draws: Draws, n: int, deactivated: pl.Series) -> dict[str, pl.Series]:
    """The org's users; those whose lifecycle says deleted were deactivated instead."""
    person = _people(draws, n, pl.repeat(USER_DOMAIN, n, eager=True), free_mail_share=0)
    return {
        "Username": person["Email"],
        "Name": pl.select(pl.format("{} {}", person["FirstName"], person["LastName"])).to_series(),
        "Email": person["Email"],
        "IsActive": ~deactivated,
        "UserType": pl.repeat("Standard", n, eager=True),
    }
