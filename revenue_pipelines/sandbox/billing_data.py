"""The synthetic billing system (think Stripe or Zuora): accounts, invoices and payments that bill
the business the CRM sandboxes record as won, so won revenue reconciles with billing.

A pure function of the seed and of the CRM data it is given (drawn with `Draws`, as the CRMs are):

- A customer is a live Salesforce account, or a live HubSpot company that is not a live account's
  company (`truth_overlap`): someone known to both CRMs is one customer, under Salesforce.
- A customer with won business has one billing account. Won business is a live won opportunity
  (IsWon) of a live account, or a live closedwon HubSpot deal of a live company, which bills that
  company's customer (the Salesforce account, when the company is one). Opportunities of deleted
  accounts, and deals whose company is archived (archiving drops the association), bill no one. A
  deal HubSpot's Salesforce integration made of an opportunity (`hs_salesforceopportunityid` set) is
  that opportunity's business, not more of it: it never bills on its own (the opportunity does).
- Each won deal or opportunity that bills, if it has an amount, has one invoice: subtotal =
  amount x 100 cents exactly, in the deal's currency, tax 0-20% (the account's rate), issued 0-3
  days after the close and before the window's end, due 30 days after issue. Status shares are
  exactly those of `STATUSES` (rounded); paid invoices are paid in full by one payment or two, some
  open ones in part.

Timestamps are UTC, to the microsecond, and fall before the window's end; like the CRMs' creation
dates they reach back before its start (most deals closed months before it). `external_account_id`
is the CRM's account id: Salesforce's 18-character Id, about 10% of them in the 15-character,
case-sensitive form that older integrations store, or HubSpot's company id as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import polars as pl

from revenue_pipelines.sandbox.bigquery import Column
from revenue_pipelines.sandbox.hubspot_data import FIRST_NAMES, FREE_MAIL, LAST_NAMES, Draws

DATASET = "billing"
TABLES = ("accounts", "invoices", "payments")
UTC_US = pl.Datetime("us", "UTC")
US_PER_DAY = 86_400_000_000
ISSUE_DAYS = 3  # invoices go out within this many days of the close
DUE_DAYS = 30
VOID_DAYS = 30  # a void invoice is voided within this many days of issue
PAYMENT_DAYS = 45  # payments arrive within this many days of issue
SETUP_DAYS = 7  # a billing account is set up within this many days before its first close
STATUSES = {"paid": 70, "open": 20, "void": 6, "uncollectible": 4}
TWO_PAYMENT_SHARE = 0.2  # of paid invoices, those settled by two partial payments
PARTIAL_OPEN_SHARE = 0.25  # of open invoices, those with a partial payment
METHODS = ("card", "ach", "wire")
METHOD_WEIGHTS = (50, 35, 15)
TAX_RATES = (0.0, 0.0, 0.05, 0.0725, 0.0825, 0.1, 0.19, 0.2)
SHORT_ID_SHARE = (0.09, 0.11)  # of Salesforce customers, those whose id billing keeps in 15 characters
FREE_MAIL_SHARE = 0.04  # of customers with a domain, those billed at a free-mail address
MAILBOXES = ("billing", "accounts.payable", "ap", "finance", "invoices")
WEBSITE_PREFIX = r"^(https?://)?(www\.)?"
HUBSPOT_WON_STAGE = "closedwon"
DTYPES = {"STRING": pl.String(), "INTEGER": pl.Int64(), "TIMESTAMP": UTC_US, "DATE": pl.Date()}


@dataclass(frozen=True)
class CrmTruth:
    """What billing is made from: HubSpot's `truth("deals")`, `truth("companies")` and
    `truth_associations("deals", "companies")`; Salesforce's `truth("Opportunity")`, `truth("Account")`
    and `truth_overlap()`; `window` the sandbox's [start, end)."""

    hubspot_deals: pl.DataFrame
    hubspot_companies: pl.DataFrame
    deal_companies: pl.DataFrame
    opportunities: pl.DataFrame
    accounts: pl.DataFrame
    overlap: pl.DataFrame
    window: tuple[datetime, datetime]


class BillingSeed:
    """The billing system as BigQuery's seed (`bigquery.SeedSource`): generated on first use, from
    the CRM frames it was given (captured at construction, so later data faults do not reach it)."""

    dataset = DATASET

    @property
    def table_names(self) -> list[str]:
        return list(TABLES)

    def __init__(self, seed: int, crm: CrmTruth):
        self._seed = seed
        self._crm = crm

    @cached_property
    def billing(self) -> Billing:
        return generate_billing(self._seed, self._crm)

    def schema(self, table: str) -> tuple[Column, ...]:
        return SCHEMAS[_known(table)]

    def truth(self, table: str) -> pl.DataFrame:
        return self.billing.table(table)

    def frames(self) -> Iterator[tuple[str, pl.DataFrame]]:
        for table in TABLES:
            yield table, self.billing.table(table)


@dataclass(frozen=True)
class Billing:
    """The billing system's three tables, as `SCHEMAS` describes them."""

    accounts: pl.DataFrame
    invoices: pl.DataFrame
    payments: pl.DataFrame

    def table(self, name: str) -> pl.DataFrame:
        return getattr(self, _known(name))


def _known(table: str) -> str:
    if table not in TABLES:
        raise KeyError(f"billing has no table {table!r}; it has {', '.join(TABLES)}")
    return table


SCHEMAS: dict[str, tuple[Column, ...]] = {
    "accounts": (
        Column("billing_account_id", "STRING"),
        Column("name", "STRING"),
        Column("crm_source", "STRING"),
        Column("external_account_id", "STRING"),
        Column("billing_email", "STRING"),
        Column("currency", "STRING"),
        Column("created_at", "TIMESTAMP"),
        Column("updated_at", "TIMESTAMP"),
    ),
    "invoices": (
        Column("invoice_id", "STRING"),
        Column("billing_account_id", "STRING"),
        Column("crm_deal_id", "STRING"),
        Column("issued_at", "TIMESTAMP"),
        Column("due_date", "DATE"),
        Column("currency", "STRING"),
        Column("subtotal_cents", "INTEGER"),
        Column("tax_cents", "INTEGER"),
        Column("total_cents", "INTEGER"),
        Column("status", "STRING"),
        Column("voided_at", "TIMESTAMP"),
        Column("updated_at", "TIMESTAMP"),
    ),
    "payments": (
        Column("payment_id", "STRING"),
        Column("invoice_id", "STRING"),
        Column("amount_cents", "INTEGER"),
        Column("paid_at", "TIMESTAMP"),
        Column("method", "STRING"),
    ),
}


def generate_billing(seed: int, crm: CrmTruth) -> Billing:
    """The billing system for the CRMs' won business (see `CrmTruth`)."""
    draws = Draws(f"{seed}:billing")
    end_us = _micros(crm.window[1])
    won = _won_business(crm)
    customers = _accounts(draws, won, crm.hubspot_companies, crm.accounts, end_us)
    invoices = _invoices(draws, won, customers, end_us)
    payments = _payments(draws, invoices, end_us)
    last_payment = payments.group_by("invoice_id").agg(last_paid=pl.col("paid_at").max())
    invoices = (
        invoices.join(last_payment, on="invoice_id", how="left", maintain_order="left")
        .with_columns(updated_at=pl.max_horizontal("issued_at", "last_paid", "voided_at"))
        .select(_columns("invoices"))
    )
    return Billing(customers.select(_columns("accounts")), invoices, payments.select(_columns("payments")))


def _columns(table: str) -> list[pl.Expr]:
    """The table's columns, in order, typed as its schema says (even when there are no rows)."""
    return [pl.col(column.name).cast(DTYPES[column.type]) for column in SCHEMAS[table]]


def _micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _won_business(crm: CrmTruth) -> pl.DataFrame:
    """Every won deal and opportunity that bills a customer: crm_source and customer (the customer's
    CRM id), crm_deal_id, amount_cents (null without an amount), currency and closed_us (epoch µs).
    Deals mirrored from Salesforce are left to their opportunities: each business bills once."""
    live_accounts = crm.accounts.filter(~pl.col("IsDeleted")).select(account="Id")
    salesforce = (
        crm.opportunities.filter(pl.col("IsWon") & ~pl.col("IsDeleted"))
        .join(live_accounts, left_on="AccountId", right_on="account", how="semi")
        .select(
            crm_source=pl.lit("salesforce"),
            customer="AccountId",
            crm_deal_id="Id",
            amount_cents=(pl.col("Amount") * 100).round().cast(pl.Int64),
            currency="CurrencyIsoCode",
            closed_us=pl.col("CloseDate").cast(pl.Datetime("us")).dt.epoch("us"),
        )
    )
    shared = crm.overlap.join(live_accounts, left_on="account_id", right_on="account", how="semi")
    live_companies = crm.hubspot_companies.filter(~pl.col("archived")).select(company="id")
    hubspot = (
        crm.hubspot_deals.filter(
            (pl.col("dealstage") == HUBSPOT_WON_STAGE)
            & ~pl.col("archived")
            & pl.col("hs_salesforceopportunityid").is_null()
        )
        .join(crm.deal_companies.select(deal="from_id", company="to_id"), left_on="id", right_on="deal")
        .join(live_companies, on="company", how="semi")
        .join(shared, left_on="company", right_on="hubspot_company_id", how="left")
        .select(
            crm_source=pl.when(pl.col("account_id").is_null()).then(pl.lit("hubspot")).otherwise(pl.lit("salesforce")),
            customer=pl.coalesce("account_id", pl.col("company").cast(pl.String)),
            crm_deal_id=pl.col("id").cast(pl.String),
            # HubSpot's amount is text ("12340.00"): exact cents through a decimal.
            amount_cents=(pl.col("amount").cast(pl.Decimal(38, 2), strict=False) * 100).cast(pl.Int64),
            currency="deal_currency_code",
            closed_us=pl.col("closedate").str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_unit="us").dt.epoch("us"),
        )
    )
    return pl.concat([salesforce, hubspot]).sort("closed_us", "crm_deal_id")


def _accounts(
    draws: Draws, won: pl.DataFrame, companies: pl.DataFrame, accounts: pl.DataFrame, end_us: int
) -> pl.DataFrame:
    """One billing account per customer with won business, numbered in order of creation, with
    internal columns `customer` (its CRM id in full) and `tax_rate`."""
    salesforce = accounts.select(
        crm_source=pl.lit("salesforce"),
        customer="Id",
        name="Name",
        domain=pl.col("Website").str.replace(WEBSITE_PREFIX, "").str.to_lowercase(),
    )
    hubspot = companies.select(
        crm_source=pl.lit("hubspot"), customer=pl.col("id").cast(pl.String), name="name", domain="domain"
    )
    first = (
        won.group_by("crm_source", "customer")
        .agg(pl.col("closed_us").min(), pl.col("currency").sort_by("closed_us", "crm_deal_id").first())
        .join(pl.concat([salesforce, hubspot]), on=["crm_source", "customer"], how="left")
        .sort("closed_us", "crm_source", "customer")
    )
    n = first.height
    created = first["closed_us"] - (draws.uniform(n) * SETUP_DAYS * US_PER_DAY).floor().cast(pl.Int64)
    updated = created + (draws.uniform(n) * (end_us - created)).floor().cast(pl.Int64)
    salesforce_rows = (first["crm_source"] == "salesforce").arg_true()
    short = pl.repeat(False, n, dtype=pl.Boolean, eager=True).scatter(
        salesforce_rows, draws.share(len(salesforce_rows), *SHORT_ID_SHARE)
    )
    free_mail = first["domain"].is_null() | (draws.uniform(n) < FREE_MAIL_SHARE)
    mailbox = pl.format("{}.{}{}", draws.pick(FIRST_NAMES, n), draws.pick(LAST_NAMES, n), draws.below(90, n) + 10)
    return (
        first.with_columns(
            billing_account_id=pl.format("BA-{}", (pl.int_range(1, n + 1)).cast(pl.String).str.zfill(6)),
            external_account_id=pl.when(short).then(pl.col("customer").str.slice(0, 15)).otherwise("customer"),
            billing_email=pl.when(free_mail)
            .then(pl.format("{}@{}", mailbox.str.to_lowercase(), draws.pick(FREE_MAIL, n)))
            .otherwise(pl.format("{}@{}", draws.pick(MAILBOXES, n), "domain")),
            created_at=created.cast(UTC_US),
            updated_at=updated.cast(UTC_US),
            tax_rate=pl.Series(TAX_RATES, dtype=pl.Float64).gather(draws.below(len(TAX_RATES), n)),
        )
        .drop("closed_us", "domain")
        .sort("billing_account_id")
    )


def _statuses(draws: Draws, issued_us: pl.Series) -> pl.Series:
    """Each invoice's status, each status's count its share of STATUSES (largest remainders).
    Open invoices are mostly recent ones: they go to the highest issue ranks, jittered."""
    n = len(issued_us)
    total = sum(STATUSES.values())
    exact = [n * share / total for share in STATUSES.values()]
    counts = [int(value) for value in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    count = dict(zip(STATUSES, counts, strict=True))
    recency = issued_us.rank("ordinal").cast(pl.Float64) / max(n, 1) + 0.5 * draws.uniform(n)
    by_recency = recency.arg_sort(descending=True)
    others = pl.Series([status for status in STATUSES if status != "open" for _ in range(count[status])])
    shuffled = others.gather(draws.uniform(len(others)).arg_sort()) if len(others) else others
    labels = pl.concat([pl.repeat("open", count["open"], dtype=pl.String, eager=True), shuffled.cast(pl.String)])
    return labels.gather(by_recency.arg_sort()).rename("status")


def _invoices(draws: Draws, won: pl.DataFrame, customers: pl.DataFrame, end_us: int) -> pl.DataFrame:
    """One invoice per won deal with an amount, numbered in order of issue (internal columns too)."""
    billed = won.filter(pl.col("amount_cents").is_not_null()).join(
        customers.select("crm_source", "customer", "billing_account_id", "tax_rate"),
        on=["crm_source", "customer"],
        maintain_order="left",
    )
    n = billed.height
    # Within ISSUE_DAYS of the close, and at most halfway to the window's end, so later events fit.
    room = ((end_us - billed["closed_us"]) // 2).clip(upper_bound=ISSUE_DAYS * US_PER_DAY)
    issued = billed["closed_us"] + (draws.uniform(n) * room).floor().cast(pl.Int64)
    status = _statuses(draws, issued)
    void_delay = _delay(draws.uniform(n), issued, VOID_DAYS, end_us)
    return (
        billed.with_columns(issued_us=issued, status=status, voided_us=void_delay)
        .sort("issued_us", "crm_deal_id")
        .with_columns(
            invoice_id=pl.format("INV-{}", pl.int_range(1, n + 1).cast(pl.String).str.zfill(6)),
            issued_at=pl.col("issued_us").cast(UTC_US),
            due_date=(pl.col("issued_us").cast(UTC_US) + pl.duration(days=DUE_DAYS)).dt.date(),
            subtotal_cents="amount_cents",
            tax_cents=(pl.col("amount_cents") * pl.col("tax_rate")).round().cast(pl.Int64),
            voided_at=pl.when(pl.col("status") == "void").then(pl.col("voided_us").cast(UTC_US)),
        )
        .with_columns(total_cents=pl.col("subtotal_cents") + pl.col("tax_cents"))
    )


def _delay(u: pl.Series, after_us: pl.Series, max_days: int, end_us: int) -> pl.Series:
    """An instant strictly after `after_us`, within `max_days` of it and strictly before `end_us`."""
    span = (end_us - 1 - after_us).clip(upper_bound=max_days * US_PER_DAY) - 1
    return after_us + 1 + (u * span.clip(lower_bound=0)).floor().cast(pl.Int64)


def _payments(draws: Draws, invoices: pl.DataFrame, end_us: int) -> pl.DataFrame:
    """Paid invoices: one payment of the total, or (TWO_PAYMENT_SHARE) two that sum to it; a share of
    open ones: one partial payment. Numbered in order of payment."""
    n = invoices.height
    paid = invoices["status"] == "paid"
    total = invoices["total_cents"]
    two = paid & (draws.uniform(n) < TWO_PAYMENT_SHARE) & (total >= 2)
    partial = (invoices["status"] == "open") & (draws.uniform(n) < PARTIAL_OPEN_SHARE) & (total >= 2)
    # The first (or only) payment's share of the total; the second pays the rest.
    fraction = pl.select(pl.when(two).then(0.3 + 0.4 * draws.uniform(n)).otherwise(0.2 + 0.6 * draws.uniform(n)))
    first_cents = (fraction.to_series() * total).floor().cast(pl.Int64).clip(1, (total - 1).clip(lower_bound=1))
    first_us = _delay(draws.uniform(n), invoices["issued_us"], PAYMENT_DAYS, end_us)
    second_us = _delay(draws.uniform(n), first_us, PAYMENT_DAYS, end_us)
    methods = draws.pick(METHODS, n, METHOD_WEIGHTS)
    frame = invoices.select("invoice_id").with_columns(
        paid=paid, two=two, partial=partial, first_cents=first_cents, first_us=first_us, second_us=second_us,
        total=total, method=methods,
    )  # fmt: skip
    single = frame.filter(pl.col("paid") & ~pl.col("two")).select(
        "invoice_id", amount_cents="total", paid_us="first_us", method="method"
    )
    first = frame.filter(pl.col("two") | pl.col("partial")).select(
        "invoice_id", amount_cents="first_cents", paid_us="first_us", method="method"
    )
    second = frame.filter("two").select(
        "invoice_id", amount_cents=pl.col("total") - pl.col("first_cents"), paid_us="second_us", method="method"
    )
    payments = pl.concat([single, first, second]).sort("paid_us", "invoice_id")
    return payments.with_columns(
        payment_id=pl.format("PAY-{}", pl.int_range(1, payments.height + 1).cast(pl.String).str.zfill(7)),
        paid_at=pl.col("paid_us").cast(UTC_US),
    )
