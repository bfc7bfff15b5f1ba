"""The synthetic HubSpot portal: companies, contacts, deals and their associations.

Everything is a pure function of the seed and sizes. Values are drawn in bulk with one
`random.Random` and assembled column by column in polars, so 200,000 contacts take seconds.
Records are stored columnar, one DataFrame per object type sorted by id, with internal
columns (`created_at`, `updated_at`, `archived`, `archived_at`, `id_missing`) next to the
properties, which hold exactly the strings HubSpot would send. The Salesforce org is built from
these companies with the same generators (`Draws`, lifecycles, names, domains, emails); then
`add_mirrored_deals` adds the deals HubSpot's Salesforce integration made of some of its
opportunities (`hs_salesforceopportunityid` set; null on HubSpot's own deals).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

OBJECT_TYPES = ("companies", "contacts", "deals")
MODIFIED_PROPERTY = {"companies": "hs_lastmodifieddate", "contacts": "lastmodifieddate", "deals": "hs_lastmodifieddate"}
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
UTC_MS = pl.Datetime("ms", "UTC")
INTERNAL_COLUMNS = ("id", "created_at", "updated_at", "archived", "archived_at", "id_missing")


@dataclass(frozen=True)
class Property:
    """A property definition as the properties endpoint describes it."""

    name: str
    label: str
    type: str
    field_type: str


def _text(name: str, label: str) -> Property:
    return Property(name, label, "string", "text")


def _choice(name: str, label: str) -> Property:
    return Property(name, label, "enumeration", "select")


def _number(name: str, label: str) -> Property:
    return Property(name, label, "number", "number")


def _datetime(name: str, label: str) -> Property:
    return Property(name, label, "datetime", "date")


def _bookkeeping(modified: str) -> list[Property]:
    return [
        _choice("hubspot_owner_id", "Owner"),
        _datetime("createdate", "Create Date"),
        _datetime(modified, "Last Modified Date"),
        _number("hs_object_id", "Record ID"),
    ]


SCHEMAS: dict[str, tuple[Property, ...]] = {
    "companies": (
        _text("name", "Company name"),
        _text("domain", "Company Domain Name"),
        _choice("industry", "Industry"),
        _text("city", "City"),
        _text("country", "Country/Region"),
        _number("numberofemployees", "Number of Employees"),
        _number("annualrevenue", "Annual Revenue"),
        _choice("lifecyclestage", "Lifecycle Stage"),
        *_bookkeeping("hs_lastmodifieddate"),
    ),
    "contacts": (
        _text("email", "Email"),
        _text("firstname", "First Name"),
        _text("lastname", "Last Name"),
        Property("phone", "Phone Number", "string", "phonenumber"),
        _text("company", "Company Name"),
        _text("jobtitle", "Job Title"),
        _choice("lifecyclestage", "Lifecycle Stage"),
        _choice("hs_lead_status", "Lead Status"),
        _choice("hs_analytics_source", "Original Traffic Source"),
        _text("hs_analytics_source_data_1", "Original Traffic Source Drill-Down 1"),
        *_bookkeeping("lastmodifieddate"),
    ),
    "deals": (
        _text("dealname", "Deal Name"),
        _choice("pipeline", "Pipeline"),
        _choice("dealstage", "Deal Stage"),
        _number("amount", "Amount"),
        _choice("deal_currency_code", "Currency"),
        _datetime("closedate", "Close Date"),
        _text("hs_salesforceopportunityid", "Salesforce Opportunity ID"),
        _choice("hs_analytics_source", "Original Source Type"),
        _text("hs_analytics_source_data_1", "Original Source Drill-Down 1"),
        *_bookkeeping("hs_lastmodifieddate"),
    ),
}
DEAL_SOURCE_PROPERTIES = ("hs_analytics_source", "hs_analytics_source_data_1")

# First id of each object type; ids then climb in creation order with random gaps.
FIRST_ID = {"contacts": 101, "companies": 5_000_000_001, "deals": 9_000_000_001}

BRANDS = (
    "Acme", "Northwind", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay",
    "Soylent", "Cyberdyne", "Tyrell", "Aperture", "Wonka", "Pied Piper", "Blue Harbor", "Silver Oak",
    "Redwood", "Bright Path", "Ironclad", "Evergreen", "Summit", "Polar", "Atlas", "Nimbus", "Quantum",
    "Keystone", "Lumen", "Orbit", "Vertex", "Harbor", "Crescent", "Granite", "Juniper", "Maple",
    "Falcon", "Beacon", "Cobalt", "Sterling", "Horizon",
)  # fmt: skip
SECTORS = (
    "Logistics", "Analytics", "Foods", "Health", "Robotics", "Energy", "Labs", "Systems", "Media",
    "Capital", "Motors", "Textiles", "Software", "Cloud", "Retail", "Pharma", "Freight", "Security",
    "Consulting", "Dynamics", "Networks", "Studios", "Biotech", "Solar", "Foundry",
)  # fmt: skip
COMPANY_SUFFIXES = ("", "", "", " Group", " Partners", " Holdings", " Co", " International")
TLDS = ("com", "com", "com", "io", "co", "net", "de", "co.uk", "fr")
INDUSTRIES = (
    "COMPUTER_SOFTWARE", "LOGISTICS_AND_SUPPLY_CHAIN", "HOSPITAL_HEALTH_CARE", "FINANCIAL_SERVICES",
    "MARKETING_AND_ADVERTISING", "RETAIL", "FOOD_BEVERAGES", "AUTOMOTIVE", "RENEWABLES_ENVIRONMENT",
    "EDUCATION_MANAGEMENT", None,
)  # fmt: skip
CITIES = (
    ("New York", "United States"), ("San Francisco", "United States"), ("Austin", "United States"),
    ("Chicago", "United States"), ("Toronto", "Canada"), ("London", "United Kingdom"),
    ("Manchester", "United Kingdom"), ("Berlin", "Germany"), ("Munich", "Germany"), ("Paris", "France"),
    ("Amsterdam", "Netherlands"), ("Dublin", "Ireland"), ("Stockholm", "Sweden"), ("Sydney", "Australia"),
)  # fmt: skip
OWNER_IDS = ("71234501", "71234502", "71234503", "71234504", "71234505", "71234506", "71234507", None)
FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
    "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Chris", "Karen",
    "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark", "Ashley", "Paul", "Emily", "Lukas",
    "Sofia", "Noah", "Mia", "Oliver", "Amelia", "Liam", "Hannah", "Mateo", "Chloe", "Yuki", "Priya",
    "Arjun", "Fatima", "Omar", "Ingrid", "Lars", "Elena", "Marco", "Giulia",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White",
    "Harris", "Clark", "Lewis", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Muller",
    "Schmidt", "Schneider", "Fischer", "Dubois", "Laurent", "Rossi", "Bianchi", "Nakamura", "Tanaka",
    "Patel", "Sharma", "Khan", "Ali", "Nilsson", "Berg", "Kowalski", "Novak", "Murphy", "Kelly",
)  # fmt: skip
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com")
JOB_TITLES = (
    "CEO", "CTO", "CFO", "VP Sales", "VP Marketing", "Head of Operations", "Marketing Manager",
    "Sales Manager", "Account Executive", "Data Engineer", "Software Engineer", "Product Manager",
    "Procurement Lead", "Office Manager", None,
)  # fmt: skip
CONTACT_STAGES = (
    "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
    "evangelist", "other",
)  # fmt: skip
CONTACT_STAGE_WEIGHTS = (10, 30, 15, 10, 10, 20, 3, 2)
COMPANY_STAGES = ("lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer", "other")
LEAD_STATUSES = (
    "NEW", "OPEN", "IN_PROGRESS", "OPEN_DEAL", "UNQUALIFIED", "ATTEMPTED_TO_CONTACT", "CONNECTED",
    "BAD_TIMING", None,
)  # fmt: skip
# Original traffic source -> the three drill-down values it comes with (None: HubSpot leaves it empty).
SOURCE_DETAILS = {
    "ORGANIC_SEARCH": ("google", "bing", "duckduckgo"),
    "PAID_SEARCH": ("brand-search-q4", "competitor-keywords", "retargeting-always-on"),
    "EMAIL_MARKETING": ("newsletter-weekly", "product-launch-2026", "webinar-invite-nov"),
    "SOCIAL_MEDIA": ("linkedin-thought-leadership", "twitter-launch", "facebook-lookalike"),
    "REFERRALS": ("partner-program", "g2-reviews", "customer-referral"),
    "DIRECT_TRAFFIC": (None, None, None),
}
SOURCE_WEIGHTS = (30, 20, 15, 12, 8, 15)
DEAL_PRODUCTS = ("Platform", "Renewal", "Expansion", "Pilot", "Support plan", "Onboarding", "Add-on seats")
DEAL_STAGES = (
    "appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
    "contractsent", "closedwon", "closedlost",
)  # fmt: skip
DEAL_STAGE_WEIGHTS = (12, 15, 12, 10, 8, 25, 18)
CLOSED_STAGES = frozenset({"closedwon", "closedlost"})
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_WEIGHTS = (60, 25, 15)
# Deals HubSpot's Salesforce integration made of opportunities: Salesforce's stage -> the deal's.
MIRRORED_STAGES = {
    "Prospecting": "appointmentscheduled",
    "Qualification": "qualifiedtobuy",
    "Needs Analysis": "qualifiedtobuy",
    "Value Proposition": "presentationscheduled",
    "Id. Decision Makers": "decisionmakerboughtin",
    "Perception Analysis": "decisionmakerboughtin",
    "Proposal/Price Quote": "contractsent",
    "Negotiation/Review": "contractsent",
    "Closed Won": "closedwon",
    "Closed Lost": "closedlost",
}
MIRRORED_SHARE = (0.28, 0.32)  # of the live opportunities of accounts that are (live) HubSpot companies
SYNC_LAG_MS = 15 * 60 * 1000  # the integration copies a new or changed opportunity within this long

DAY_MS = 86_400_000
HISTORY_MS = 730 * DAY_MS  # records may have been created up to two years before their last change


@dataclass(frozen=True)
class ObjectTable:
    """One object type's records and schema; replaced whole on every change, so readers need no lock."""

    frame: pl.DataFrame
    schema: tuple[Property, ...]

    @property
    def property_names(self) -> list[str]:
        return [prop.name for prop in self.schema]


@dataclass(frozen=True)
class Portal:
    tables: dict[str, ObjectTable]
    associations: dict[tuple[str, str], pl.DataFrame]  # (from type, to type) -> from_id, to_id
    window: tuple[datetime, datetime]  # modifications fall in [start, end)


def modification_window(days: int, end_date: date | None) -> tuple[datetime, datetime]:
    """The `days` whole UTC days ending with `end_date` (default: yesterday UTC)."""
    if days < 1:
        raise ValueError("days must be >= 1")
    last_day = end_date or (datetime.now(UTC).date() - timedelta(days=1))
    end = datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC) + timedelta(days=1)
    return end - timedelta(days=days), end


class Draws:
    """Columns of random values from one `random.Random`, drawn in bulk and shaped in polars."""

    def __init__(self, seed: int | str):
        self._rng = random.Random(seed)

    def uniform(self, n: int) -> pl.Series:
        draw = self._rng.random
        return pl.Series([draw() for _ in range(n)], dtype=pl.Float64)

    def normal(self, n: int) -> pl.Series:
        """`n` standard normal values (Box-Muller)."""
        return (-2 * (1 - self.uniform(n)).log()).sqrt() * (2 * math.pi * self.uniform(n)).cos()

    def below(self, k: int, n: int) -> pl.Series:
        """`n` integers uniform in [0, k)."""
        return (self.uniform(n) * k).floor().cast(pl.Int64)

    def index(self, weights: Sequence[float], n: int) -> pl.Series:
        """`n` indexes into `weights`, each drawn with its weight's share."""
        cumulative = pl.Series(list(itertools.accumulate(weights)), dtype=pl.Float64)
        return cumulative.search_sorted(self.uniform(n) * cumulative[-1], side="right").cast(pl.Int64)

    def pick(self, options: Sequence[str | None], n: int, weights: Sequence[float] | None = None) -> pl.Series:
        chosen = self.index(weights, n) if weights else self.below(len(options), n)
        return pl.Series(options, dtype=pl.String).gather(chosen)

    def share(self, n: int, low: float, high: float) -> pl.Series:
        """A mask selecting exactly round(n * uniform(low, high)) records."""
        mask = [False] * n
        for index in self._rng.sample(range(n), round(n * self._rng.uniform(low, high))):
            mask[index] = True
        return pl.Series(mask, dtype=pl.Boolean)


def generate_portal(
    seed: int, companies: int, contacts: int | None, deals: int | None, days: int, end_date: date | None
) -> Portal:
    counts = {
        "companies": companies,
        "contacts": 5 * companies if contacts is None else contacts,
        "deals": 2 * companies if deals is None else deals,
    }
    if counts["companies"] < 1 or counts["contacts"] < 0 or counts["deals"] < 0:
        raise ValueError("need at least one company and no negative counts")
    window = modification_window(days, end_date)
    start_ms, end_ms = (int(bound.timestamp() * 1000) for bound in window)
    draws = Draws(seed)

    lifecycles = {name: draw_lifecycle(draws, counts[name], start_ms, end_ms) for name in OBJECT_TYPES}
    ids = {name: climbing_ids(draws, FIRST_ID[name], lifecycles[name]["created"]) for name in OBJECT_TYPES}
    contact_company = draws.below(counts["companies"], counts["contacts"])
    deal_company = draws.below(counts["companies"], counts["deals"])
    company_props = _company_properties(draws, counts["companies"])
    properties = {
        "companies": company_props,
        "contacts": _contact_properties(draws, contact_company, company_props),
        "deals": _deal_properties(draws, deal_company, company_props["name"], lifecycles["deals"]),
    }
    deal_contacts = _deal_contacts(draws, deal_company, contact_company)
    contact_sources = pl.DataFrame(
        {"id": ids["contacts"], **{name: properties["contacts"][name] for name in DEAL_SOURCE_PROPERTIES}}
    )
    properties["deals"] |= _deal_sources(
        counts["deals"], deal_contacts["deal"], ids["contacts"].gather(deal_contacts["contact"]), contact_sources
    )
    frames = {name: _assemble(name, ids[name], lifecycles[name], properties[name]).sort("id") for name in OBJECT_TYPES}
    pairs = {
        ("contacts", "companies"): (ids["contacts"], ids["companies"].gather(contact_company)),
        ("deals", "companies"): (ids["deals"], ids["companies"].gather(deal_company)),
        ("deals", "contacts"): (
            ids["deals"].gather(deal_contacts["deal"]),
            ids["contacts"].gather(deal_contacts["contact"]),
        ),
    }
    associations = {}
    for (from_type, to_type), (from_ids, to_ids) in pairs.items():
        pair_frame = pl.DataFrame({"from_id": from_ids, "to_id": to_ids})
        live = _live_pairs(pair_frame, frames[from_type], frames[to_type])
        associations[from_type, to_type] = live.sort("from_id", "to_id")
        associations[to_type, from_type] = live.select(from_id="to_id", to_id="from_id").sort("from_id", "to_id")
    tables = {name: ObjectTable(frames[name], SCHEMAS[name]) for name in OBJECT_TYPES}
    return Portal(tables, associations, window)


def add_mirrored_deals(
    portal: Portal, seed: int, opportunities: pl.DataFrame, overlap: pl.DataFrame
) -> tuple[Portal, pl.DataFrame]:
    """The portal with the deals HubSpot's Salesforce integration made of opportunities, and their pairs.

    `opportunities` is the org's Opportunity table and `overlap` its accounts that are HubSpot
    companies (account_id, hubspot_company_id), as generated. About 30% (MIRRORED_SHARE) of the live
    opportunities of those accounts whose company is live are also deals of that company, with 1-3
    of its contacts: the opportunity's name, amount, currency and close date (midnight UTC), its
    stage as MIRRORED_STAGES maps it, the default pipeline, and `hs_salesforceopportunityid` its
    18-character Id (null on every other deal). The integration made and last changed each within
    SYNC_LAG_MS of the opportunity's creation and last change (SystemModstamp), so it falls in the
    window; 3-5% were archived later, as other deals are. Deal ids are drawn again over all deals,
    climbing in creation order (HubSpot's own deals keep their order and associations).

    Pairs: hubspot_deal_id, opportunity_id, account_id, hubspot_company_id, by deal id.
    """
    draws = Draws(f"{seed}:mirrored-deals")
    start_ms, end_ms = (int(bound.timestamp() * 1000) for bound in portal.window)
    deals, frames = portal.tables["deals"], {name: table.frame for name, table in portal.tables.items()}
    live_companies = frames["companies"].filter(~pl.col("archived")).select(hubspot_company_id="id")
    candidates = (
        opportunities.filter(~pl.col("IsDeleted"))
        .join(overlap.select(AccountId="account_id", hubspot_company_id="hubspot_company_id"), on="AccountId")
        .join(live_companies, on="hubspot_company_id", how="semi")
        .sort("Id")
    )
    mirrored = candidates.filter(draws.share(candidates.height, *MIRRORED_SHARE))
    n = mirrored.height

    changed = mirrored["SystemModstamp"].dt.epoch("ms") + draws.below(SYNC_LAG_MS, n)
    updated = changed.clip(start_ms, end_ms - 2)  # room for an archival before the window's end
    created = pl.min_horizontal(mirrored["CreatedDate"].dt.epoch("ms") + draws.below(SYNC_LAG_MS, n), updated)
    archived = draws.share(n, 0.03, 0.05)
    delay = (draws.uniform(n) * (end_ms - 1 - updated)).floor().cast(pl.Int64)
    lifecycle = pl.DataFrame({"created": pl.select(created).to_series(), "updated": updated}).with_columns(
        archived_at=pl.when(archived).then(pl.col("updated") + 1 + delay)
    )
    cents = (mirrored["Amount"] * 100).round().cast(pl.Int64)
    properties = {
        "dealname": mirrored["Name"],
        "pipeline": pl.repeat("default", n, dtype=pl.String, eager=True),
        "dealstage": mirrored["StageName"].replace_strict(MIRRORED_STAGES, return_dtype=pl.String),
        "amount": pl.select(pl.format("{}.{}", cents // 100, (cents % 100).cast(pl.String).str.zfill(2))).to_series(),
        "deal_currency_code": mirrored["CurrencyIsoCode"],
        "closedate": timestamps(mirrored["CloseDate"].cast(pl.Datetime("ms")).dt.epoch("ms")).dt.strftime(
            TIMESTAMP_FORMAT
        ),
        "hs_salesforceopportunityid": mirrored["Id"],
        "hubspot_owner_id": draws.pick(OWNER_IDS, n),
    }

    # Every deal's id again, in creation order: HubSpot's own deals keep their order among themselves.
    native = deals.frame
    ids = climbing_ids(draws, FIRST_ID["deals"], pl.concat([native["created_at"].dt.epoch("ms"), lifecycle["created"]]))
    native_ids, mirror_ids = ids.head(native.height), ids.tail(n)
    contact_companies = portal.associations["contacts", "companies"]
    picks = _deal_contacts(draws, mirrored["hubspot_company_id"], contact_companies["to_id"])
    picked_contacts = contact_companies["from_id"].gather(picks["contact"])
    properties |= _deal_sources(n, picks["deal"], picked_contacts, frames["contacts"])
    frames["deals"] = pl.concat(
        [
            native.with_columns(id=native_ids, hs_object_id=native_ids.cast(pl.String)),
            _assemble("deals", mirror_ids, lifecycle, properties),
        ]
    ).sort("id")

    added = {
        "companies": pl.DataFrame({"from_id": mirror_ids, "to_id": mirrored["hubspot_company_id"]}),
        "contacts": pl.DataFrame(
            {
                "from_id": mirror_ids.gather(picks["deal"]),
                "to_id": picked_contacts,
            }
        ),
    }
    associations = {}
    for (from_type, to_type), pairs in portal.associations.items():
        if from_type == "deals":
            pairs = pairs.with_columns(pl.col("from_id").replace_strict(native["id"], native_ids))
            if to_type in added:
                new = _live_pairs(added[to_type], frames["deals"], frames[to_type])
                pairs = pl.concat([pairs, new])
        elif to_type == "deals":
            pairs = pl.concat(
                [
                    pairs.with_columns(pl.col("to_id").replace_strict(native["id"], native_ids)),
                    _live_pairs(added[from_type], frames["deals"], frames[from_type]).select(
                        from_id="to_id", to_id="from_id"
                    ),
                ]
            )
        associations[from_type, to_type] = pairs.sort("from_id", "to_id")
    tables = {**portal.tables, "deals": ObjectTable(frames["deals"], deals.schema)}
    mirrors = pl.DataFrame(
        {
            "hubspot_deal_id": mirror_ids,
            "opportunity_id": mirrored["Id"],
            "account_id": mirrored["AccountId"],
            "hubspot_company_id": mirrored["hubspot_company_id"],
        }
    ).sort("hubspot_deal_id")
    return Portal(tables, associations, portal.window), mirrors


def draw_lifecycle(draws: Draws, n: int, start_ms: int, end_ms: int) -> pl.DataFrame:
    """Creation, last modification and archival instants (epoch ms) of `n` records.

    The last modification is uniform over the window, creation up to two years earlier
    (skewed to recent); 3-5% of records are archived after their last change, inside the window.
    """
    updated = start_ms + (draws.uniform(n) * (end_ms - 1 - start_ms)).floor().cast(pl.Int64)
    created = updated - (draws.uniform(n).pow(2) * HISTORY_MS).floor().cast(pl.Int64)
    archived = draws.share(n, 0.03, 0.05)
    delay = (draws.uniform(n) * (end_ms - 1 - updated)).floor().cast(pl.Int64)
    return pl.DataFrame({"created": created, "updated": updated}).with_columns(
        archived_at=pl.when(archived).then(pl.col("updated") + 1 + delay)
    )


def climbing_ids(draws: Draws, first: int, created: pl.Series) -> pl.Series:
    """Ids from `first` up, climbing with creation time with gaps of 1-5: unique but not contiguous."""
    creation_order = pl.DataFrame({"created": created}).with_row_index().sort("created", "index")["index"]
    ids_in_creation_order = first - 1 + (draws.below(5, len(created)) + 1).cum_sum()
    return ids_in_creation_order.gather(creation_order.arg_sort()).rename("id")


def blank(values: pl.Series, mask: pl.Series) -> pl.Series:
    """`values` with nulls where `mask` is set: properties a portal leaves empty."""
    return pl.select(pl.when(~mask).then(values)).to_series().rename(values.name)


def company_names(draws: Draws, n: int) -> pl.Series:
    return pl.select(
        pl.format("{} {}{}", draws.pick(BRANDS, n), draws.pick(SECTORS, n), draws.pick(COMPANY_SUFFIXES, n))
    ).to_series()


def company_domains(names: pl.Series, tlds: pl.Series, taken: pl.Series | None = None) -> pl.Series:
    """A domain per name at its TLD. Namesakes, also of the companies named in `taken` (whose
    domains were made the same way), get numbered stems (acme-foods-2.com): no domain repeats."""
    prior = pl.Series([], dtype=pl.String) if taken is None else taken
    namesake = pl.col("stem").cum_count().over("stem")
    stems = pl.DataFrame({"stem": pl.concat([prior, names]).str.to_lowercase().str.replace_all(" ", "-")}).select(
        pl.when(namesake > 1).then(pl.format("{}-{}", "stem", namesake)).otherwise("stem")
    )
    return pl.select(pl.format("{}.{}", stems.to_series().tail(len(names)), tlds)).to_series()


def company_size(draws: Draws, n: int) -> tuple[pl.Series, pl.Series]:
    """Employees (log-uniform, 10 to about 30,000) and annual revenue (80k-250k per employee)."""
    employees = (10 ** (1 + 3.5 * draws.uniform(n))).floor().cast(pl.Int64)
    revenue = employees * (80 + 170 * draws.uniform(n)).floor().cast(pl.Int64) * 1000
    return employees, revenue


def _company_properties(draws: Draws, n: int) -> dict[str, pl.Series]:
    names = company_names(draws, n)
    place = draws.below(len(CITIES), n)
    employees, revenue = company_size(draws, n)
    return {
        "name": names,
        "domain": company_domains(names, draws.pick(TLDS, n)),
        "industry": draws.pick(INDUSTRIES, n),
        "city": pl.Series([city for city, _ in CITIES]).gather(place),
        "country": pl.Series([country for _, country in CITIES]).gather(place),
        "numberofemployees": blank(employees.cast(pl.String), draws.uniform(n) < 0.05),
        "annualrevenue": blank(revenue.cast(pl.String), draws.uniform(n) < 0.1),
        "lifecyclestage": draws.pick(COMPANY_STAGES, n),
        "hubspot_owner_id": draws.pick(OWNER_IDS, n),
    }


def _contact_properties(
    draws: Draws, company_of: pl.Series, company_props: dict[str, pl.Series]
) -> dict[str, pl.Series]:
    n = len(company_of)
    first, last = draws.pick(FIRST_NAMES, n), draws.pick(LAST_NAMES, n)
    emails = work_emails(draws, first, last, company_props["domain"].gather(company_of))
    phones = pl.select(pl.format("+1 555-{}", 1_000_000 + draws.below(9_000_000, n))).to_series()
    source = draws.index(SOURCE_WEIGHTS, n)
    details = pl.Series([detail for options in SOURCE_DETAILS.values() for detail in options], dtype=pl.String)
    return {
        "email": emails,
        "firstname": first,
        "lastname": last,
        "phone": blank(phones, draws.uniform(n) < 0.15),
        "company": company_props["name"].gather(company_of),
        "jobtitle": draws.pick(JOB_TITLES, n),
        "lifecyclestage": draws.pick(CONTACT_STAGES, n, CONTACT_STAGE_WEIGHTS),
        "hs_lead_status": draws.pick(LEAD_STATUSES, n),
        "hs_analytics_source": pl.Series(list(SOURCE_DETAILS), dtype=pl.String).gather(source),
        "hs_analytics_source_data_1": details.gather(source * 3 + draws.below(3, n)),
        "hubspot_owner_id": draws.pick(OWNER_IDS, n),
    }


def work_emails(
    draws: Draws, first: pl.Series, last: pl.Series, domains: pl.Series, free_mail_share: float = 0.12
) -> pl.Series:
    """first.last@ the company's domain, or a free-mail provider's for a share of people;
    namesakes at one domain get numbered mailboxes (jane.doe2@...), as real ones do."""
    n = len(first)
    free_mail = draws.uniform(n) < free_mail_share
    mailboxes = pl.DataFrame(
        {
            "local": pl.select(pl.format("{}.{}", first, last).str.to_lowercase()).to_series(),
            "domain": pl.select(pl.when(free_mail).then(draws.pick(FREE_MAIL, n)).otherwise(domains)).to_series(),
        }
    )
    namesake = pl.col("local").cum_count().over("local", "domain")
    return mailboxes.select(
        pl.when(namesake > 1)
        .then(pl.format("{}{}@{}", "local", namesake, "domain"))
        .otherwise(pl.format("{}@{}", "local", "domain"))
    ).to_series()


def _deal_properties(
    draws: Draws, company_of: pl.Series, company_names: pl.Series, lifecycle: pl.DataFrame
) -> dict[str, pl.Series]:
    n = len(company_of)
    stages = draws.pick(DEAL_STAGES, n, DEAL_STAGE_WEIGHTS)
    pipelines = draws.pick(("default", "enterprise"), n, (3, 1))
    # Log-normal amounts, enterprise deals about four times larger, rounded to tens.
    normal = draws.normal(n)
    median = pl.select(pl.when(pipelines == "enterprise").then(10.5).otherwise(9.0)).to_series()
    tens = ((median + 0.8 * normal).exp() / 10).round().cast(pl.Int64)
    # Closed deals closed between creation and their last change; open ones expect to close within 90 days.
    created, updated = lifecycle["created"], lifecycle["updated"]
    closed_at = created + ((updated - created) * draws.uniform(n)).floor().cast(pl.Int64)
    expected_at = updated + (1 + draws.below(90, n)) * DAY_MS
    closes = pl.select(pl.when(stages.is_in(CLOSED_STAGES)).then(closed_at).otherwise(expected_at)).to_series()
    return {
        "dealname": pl.select(
            pl.format("{} - {}", company_names.gather(company_of), draws.pick(DEAL_PRODUCTS, n))
        ).to_series(),
        "pipeline": pipelines,
        "dealstage": stages,
        "amount": pl.select(pl.format("{}0.00", tens)).to_series(),
        "deal_currency_code": draws.pick(CURRENCIES, n, CURRENCY_WEIGHTS),
        "closedate": timestamps(closes).dt.strftime(TIMESTAMP_FORMAT),
        "hs_salesforceopportunityid": pl.repeat(None, n, dtype=pl.String, eager=True),  # HubSpot's own deals
        "hubspot_owner_id": draws.pick(OWNER_IDS, n),
    }


def _deal_sources(n: int, deal: pl.Series, contact_id: pl.Series, contacts: pl.DataFrame) -> dict[str, pl.Series]:
    """The Original Source Type and Drill-Down 1 of `n` deals, given as (deal index, contact id) pairs:
    those of each deal's first contact (the lowest id, the earliest created), as HubSpot sets a deal's
    source from its contacts'. None for a deal without contacts."""
    first = pl.DataFrame({"deal": deal, "id": contact_id}).group_by("deal").agg(pl.col("id").min())
    sources = (
        pl.DataFrame({"deal": pl.arange(0, n, dtype=deal.dtype, eager=True)})
        .join(first, on="deal", how="left")
        .join(contacts.select("id", *DEAL_SOURCE_PROPERTIES), on="id", how="left")
        .sort("deal")
    )
    return {name: sources[name] for name in DEAL_SOURCE_PROPERTIES}


def _deal_contacts(draws: Draws, deal_company: pl.Series, contact_company: pl.Series) -> pl.DataFrame:
    """(deal, contact) index pairs: each deal gets 1-3 distinct contacts of its own company.

    A deal takes consecutive members of its company's contact list from a random start,
    wrapping around; members are in random order, so the pick is random too.
    """
    members = (
        pl.DataFrame({"company": contact_company}).with_row_index("contact").sort("company", "contact").with_row_index()
    )
    rosters = members.group_by("company").agg(offset=pl.col("index").min(), size=pl.len())
    deals = pl.DataFrame(
        {
            "company": deal_company,
            "wanted": 1 + draws.below(3, len(deal_company)),
            "start": draws.uniform(len(deal_company)),
        }
    ).with_row_index("deal")
    positions = (
        deals.join(rosters, on="company")
        .with_columns(first=(pl.col("start") * pl.col("size")).floor().cast(pl.Int64))
        .with_columns(step=pl.int_ranges(0, pl.min_horizontal("wanted", "size")))
        .explode("step", empty_as_null=False)
        .select("deal", position=pl.col("offset") + (pl.col("first") + pl.col("step")) % pl.col("size"))
    )
    return positions.with_columns(contact=members["contact"].gather(positions["position"])).select("deal", "contact")


def with_values(frame: pl.DataFrame, key: str, column: str, values: dict) -> pl.DataFrame:
    """`frame` with `column` set to `values[row's key]` on the rows whose `key` is in `values`
    (a None value too); the rest as they were."""
    given = pl.DataFrame(
        {key: list(values), "__value": list(values.values())},
        schema_overrides={key: frame.schema[key], "__value": pl.Utf8},
    )
    return (
        frame.join(given, on=key, how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col(key).is_in(given[key].implode()))
            .then("__value")
            .otherwise(pl.col(column))
            .cast(frame.schema[column])
            .alias(column)
        )
        .drop("__value")
    )


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def timestamps(epoch_ms: pl.Series) -> pl.Series:
    return epoch_ms.cast(pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


def _assemble(
    object_type: str, ids: pl.Series, lifecycle: pl.DataFrame, properties: dict[str, pl.Series]
) -> pl.DataFrame:
    created = timestamps(lifecycle["created"])
    updated = timestamps(lifecycle["updated"])
    archived_at = timestamps(lifecycle["archived_at"])
    served = {
        **properties,
        "createdate": created.dt.strftime(TIMESTAMP_FORMAT),
        MODIFIED_PROPERTY[object_type]: updated.dt.strftime(TIMESTAMP_FORMAT),
        "hs_object_id": ids.cast(pl.String),
    }
    return pl.DataFrame(
        {
            "id": ids,
            **{prop.name: served[prop.name] for prop in SCHEMAS[object_type]},
            "created_at": created,
            "updated_at": updated,
            "archived": archived_at.is_not_null(),
            "archived_at": archived_at,
            "id_missing": pl.repeat(False, len(ids), eager=True),
        }
    )


def _live_pairs(pairs: pl.DataFrame, from_frame: pl.DataFrame, to_frame: pl.DataFrame) -> pl.DataFrame:
    """Archiving a record removes its associations, as in HubSpot."""
    live_from = from_frame.filter(~pl.col("archived")).select(from_id="id")
    live_to = to_frame.filter(~pl.col("archived")).select(to_id="id")
    return pairs.join(live_from, on="from_id", how="semi").join(live_to, on="to_id", how="semi")
