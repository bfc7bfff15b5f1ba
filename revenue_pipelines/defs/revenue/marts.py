"""The revenue marts: what a revenue team reads, built from the current states and the account identity.

Each is partitioned by day like its inputs: partition D is the picture as of the end of D.
"""

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from revenue_pipelines.defs.revenue.identity import (
    BILLING_INVOICES,
    HUBSPOT_COMPANIES,
    IDENTITY_KEY,
    SALESFORCE_ACCOUNTS,
)
from revenue_pipelines.defs.revenue.resources import ReferenceTables
from revenue_pipelines.lib.account_matching import SYSTEMS
from revenue_pipelines.lib.current_state import history_since
from revenue_pipelines.lib.identity import salesforce_id_18
from revenue_pipelines.lib.metadata import describe_each_day, markdown_table
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.raw_assets import OWNERS

PIPELINE_KEY = dg.AssetKey(["revenue", "marts", "pipeline"])
ACCOUNTS_KEY = dg.AssetKey(["revenue", "marts", "accounts"])
ACCOUNT_RECORDS_KEY = dg.AssetKey(["revenue", "marts", "account_records"])
HUBSPOT_DEALS = dg.AssetKey(["hubspot", "core", "deals"])
SALESFORCE_OPPORTUNITIES = dg.AssetKey(["salesforce", "core", "opportunities"])
SALESFORCE_USERS = dg.AssetKey(["salesforce", "core", "users"])
ARR_WINDOW_DAYS = 365
# Sales segments by head count: each name holds accounts below its bound; the last, all others.
SEGMENTS = (("SMB", 200), ("Mid-Market", 1000), ("Enterprise", None))
UNKNOWN_SEGMENT = "Unknown"
STAGES_MAPPED = "stages_mapped"
AMOUNTS_CONVERTED = "amounts_converted"
WON_REVENUE_BILLED = "won_revenue_matches_billing"
ANY_PIPELINE = "*"
REPORTING_CURRENCY = "USD"
RATES_SCHEMA = {"valid_from": pl.Date, "currency": pl.Utf8, "usd_per_unit": pl.Float64}
STAGE_MAPPING_FILE = Path(__file__).with_name("stage_mapping.csv")
CHANNEL_MAPPING_FILE = Path(__file__).with_name("channel_mapping.csv")
CHANNEL_SCHEMA = {"system": pl.Utf8, "source": pl.Utf8, "channel": pl.Utf8}
OTHER_CHANNEL, UNATTRIBUTED = "Other", "Unattributed"
STAGE_SCHEMA = {
    "system": pl.Utf8,
    "pipeline": pl.Utf8,
    "stage": pl.Utf8,
    "unified_stage": pl.Utf8,
    "stage_order": pl.Int64,
    "is_closed": pl.Boolean,
    "is_won": pl.Boolean,
}


def load_mapping_file(path: Path, schema: dict[str, pl.DataType], key: list[str]) -> pl.DataFrame:
    """A reviewed mapping file; one that is not a mapping fails definition load, naming the problem."""
    mapping = pl.read_csv(path, comment_prefix="#", schema=schema)
    incomplete = mapping.filter(pl.any_horizontal(pl.all().is_null()))
    doubled = mapping.filter(pl.len().over(key) > 1)
    if incomplete.height or doubled.height:
        raise ValueError(
            f"{path.name}: {incomplete.height} rows with an empty field, {doubled.height} rows mapping "
            f"one {'/'.join(key)} twice"
        )
    return mapping


STAGE_MAPPING = load_mapping_file(STAGE_MAPPING_FILE, STAGE_SCHEMA, ["system", "pipeline", "stage"])
CHANNEL_MAPPING = load_mapping_file(CHANNEL_MAPPING_FILE, CHANNEL_SCHEMA, ["system", "source"])


def with_channel(frame: pl.LazyFrame, channels: pl.DataFrame) -> pl.LazyFrame:
    """`frame` (with `system` and `source`) with the `channel` the mapping gives that source."""
    return frame.join(channels.lazy(), on=["system", "source"], how="left").with_columns(
        channel=pl.when(pl.col("source").is_null())
        .then(pl.lit(UNATTRIBUTED))
        .otherwise(pl.col("channel").fill_null(OTHER_CHANNEL))
    )


def daily_rates(rates: pl.DataFrame) -> pl.DataFrame:
    """`rates` (`RATES_SCHEMA`) as one row per currency and day, from the currency's first `valid_from`
    to the table's last: each day's rate is the latest valid on it. A small table (days x currencies)
    that a plain join can use, where an as-of join would need its input sorted."""
    days = pl.DataFrame({"rate_date": pl.date_range(rates["valid_from"].min(), rates["valid_from"].max(), eager=True)})
    return (
        days.join(rates.select("currency").unique(), how="cross")
        .sort("rate_date")
        # Eager and sorted just above, which Polars cannot verify itself when joining `by` a column.
        .join_asof(
            rates.sort("valid_from"), left_on="rate_date", right_on="valid_from", by="currency", check_sortedness=False
        )
        .filter(pl.col("usd_per_unit").is_not_null())
        .select("currency", "rate_date", "usd_per_unit")
    )


def with_usd_rate(frame: pl.LazyFrame, rates: pl.DataFrame, on: str) -> pl.LazyFrame:
    """`frame` with `usd_per_unit`, the rate of its `currency` on the date `on`; the table's last rate
    after its last day, none before a currency's first."""
    by_day = daily_rates(rates)
    last_day = by_day["rate_date"].max()
    return (
        frame.with_columns(rate_date=pl.min_horizontal(pl.col(on), pl.lit(last_day)))
        .join(by_day.lazy(), on=["currency", "rate_date"], how="left")
        .drop("rate_date")
    )


def _accounts_of(identity: pl.LazyFrame, system: str, record_column: str) -> pl.LazyFrame:
    """The account of each record of `system`, per day: the day, the record's id as `record_column`, `account_id`."""
    return identity.filter(pl.col("system") == system).select(
        PARTITION_COLUMN, pl.col("record_id").alias(record_column), "account_id"
    )


def _with_stage(deals: pl.LazyFrame, stages: pl.DataFrame) -> pl.LazyFrame:
    """`deals` with their unified stage: the mapping's row for the deal's pipeline, else its `*` row."""
    fallback = stages.filter(pl.col("pipeline") == ANY_PIPELINE).drop("pipeline").lazy()
    exact = stages.filter(pl.col("pipeline") != ANY_PIPELINE)
    if exact.is_empty():  # the usual case: one join, not two
        return deals.join(fallback, on=["system", "stage"], how="left")
    columns = [name for name in fallback.collect_schema() if name not in ("system", "stage")]
    return (
        deals.join(exact.lazy(), on=["system", "pipeline", "stage"], how="left")
        .join(fallback, on=["system", "stage"], how="left", suffix="_any")
        .with_columns(pl.coalesce(name, f"{name}_any").alias(name) for name in columns)
        .drop(f"{name}_any" for name in columns)
    )


def pipeline_frame(
    hubspot_deals: pl.LazyFrame,
    salesforce_opportunities: pl.LazyFrame,
    identity: pl.LazyFrame,
    stages: pl.DataFrame,
    rates: pl.DataFrame,
    channels: pl.DataFrame,
) -> pl.LazyFrame:
    """HubSpot deals and Salesforce opportunities as one model, per day of the inputs.

    A HubSpot deal synced from a Salesforce opportunity (`hs_salesforceopportunityid`) is that
    opportunity, counted once, as Salesforce has it (its id matched in the 18-character form).
    Amounts are converted at the rate of the close date for closed deals, of the day for open ones
    and for closed ones without a close date. The channel is where the deal's lead came
    from: the opportunity's LeadSource, or the HubSpot deal's Original Source Type (HubSpot sets it
    from the deal's contacts), with its drill-down as the campaign.
    """
    salesforce = salesforce_opportunities.select(
        PARTITION_COLUMN,
        system=pl.lit("salesforce"),
        deal_id=pl.col("id"),
        name=pl.col("Name"),
        pipeline=pl.lit(ANY_PIPELINE),
        stage=pl.col("StageName"),
        amount=pl.col("Amount"),
        currency=pl.col("CurrencyIsoCode"),
        created_at=pl.col("CreatedDate"),
        close_date=pl.col("CloseDate"),
        owner_id=pl.col("OwnerId"),
        source=pl.col("LeadSource"),
        account_record=pl.col("AccountId"),
        synced_from=pl.lit(None, pl.Utf8),
        changed_at=pl.col("changed_at"),
    )
    hubspot = hubspot_deals.select(
        PARTITION_COLUMN,
        system=pl.lit("hubspot"),
        deal_id=pl.col("id").cast(pl.Utf8),
        name=pl.col("dealname"),
        pipeline=pl.col("pipeline"),
        stage=pl.col("dealstage"),
        amount=pl.col("amount"),
        currency=pl.col("deal_currency_code"),
        created_at=pl.col("createdate"),
        close_date=pl.col("closedate").dt.date(),
        owner_id=pl.col("hubspot_owner_id").cast(pl.Utf8),
        source=pl.col("hs_analytics_source"),
        campaign=pl.col("hs_analytics_source_data_1"),
        account_record=pl.col("company_ids").list.min().cast(pl.Utf8),
        synced_from=salesforce_id_18(pl.col("hs_salesforceopportunityid")),  # typed in 15 characters too
        changed_at=pl.col("changed_at"),
    )
    # The copy of a live opportunity goes; its id stays on the opportunity.
    copies = hubspot.filter(pl.col("synced_from").is_not_null()).join(
        salesforce.select(PARTITION_COLUMN, pl.col("deal_id").alias("synced_from")),
        on=[PARTITION_COLUMN, "synced_from"],
        how="semi",
    )
    # One id per opportunity, should two deals claim it (a re-sync, a hand edit): it is still one deal.
    copy_ids = (
        copies.select(PARTITION_COLUMN, deal_id=pl.col("synced_from"), hubspot_deal_id=pl.col("deal_id"))
        .group_by(PARTITION_COLUMN, "deal_id")
        .agg(pl.col("hubspot_deal_id").min())
    )
    salesforce = salesforce.join(copy_ids, on=[PARTITION_COLUMN, "deal_id"], how="left")
    hubspot = hubspot.join(copies.select(PARTITION_COLUMN, "deal_id"), on=[PARTITION_COLUMN, "deal_id"], how="anti")
    # The account per system, before the concat: a join on (day, record) costs half one on (day, system, record).
    salesforce, hubspot = (
        frame.join(
            _accounts_of(identity, system, "account_record"), on=[PARTITION_COLUMN, "account_record"], how="left"
        )
        for frame, system in ((salesforce, "salesforce"), (hubspot, "hubspot"))
    )
    deals = pl.concat([salesforce, hubspot.with_columns(hubspot_deal_id=pl.lit(None, pl.Utf8))], how="diagonal_relaxed")

    stage_columns = ["unified_stage", "stage_order", "is_closed", "is_won"]
    deals = deals.pipe(_with_stage, stages).with_columns(
        # A closed deal without a close date (a WARN on its raw table) converts at its day's rate.
        converted_on=pl.when(pl.col("is_closed"))
        .then(pl.coalesce("close_date", PARTITION_COLUMN))
        .otherwise(pl.col(PARTITION_COLUMN))
    )
    converted = with_usd_rate(with_channel(deals, channels), rates, "converted_on").with_columns(
        amount_usd=(pl.col("amount") * pl.col("usd_per_unit")).round(2)
    )
    return converted.select(
        PARTITION_COLUMN,
        pl.concat_str("system", pl.lit(":"), "deal_id").alias("deal_key"),
        "system",
        "deal_id",
        "hubspot_deal_id",
        "account_id",
        "name",
        "pipeline",
        "stage",
        *stage_columns,
        "amount",
        "currency",
        "amount_usd",
        "converted_on",
        "created_at",
        "close_date",
        "owner_id",
        "source",
        "channel",
        "campaign",
        "changed_at",
    )


class PipelineConfig(dg.Config):
    billing_tolerance: float = Field(
        default=0.01,
        description="How far billed revenue may be from won revenue, as a share of it, before the check fails.",
    )


# The states whose history bounds the reconciliation: a deal closed before any of them began may be missing.
RECONCILED_STATES = (HUBSPOT_DEALS, SALESFORCE_OPPORTUNITIES, BILLING_INVOICES)


@dataclass(frozen=True)
class Reconciliation:
    """Won revenue against billing, per won deal closed on or after `since`."""

    deals: pl.DataFrame
    """Per won deal: won and billed amounts (USD, at the deal's rate) and how it stands."""
    since: date

    @property
    def won_usd(self) -> float:
        return round(self.deals["amount_usd"].sum(), 2)

    @property
    def billed_usd(self) -> float:
        return round(self.deals["billed_usd"].sum(), 2)

    def within(self, tolerance: float) -> bool:
        return abs(self.won_usd - self.billed_usd) <= tolerance * self.won_usd


def reconcile_won_revenue(deals: pl.DataFrame, invoices: pl.DataFrame, since: date) -> Reconciliation:
    """Compare each won deal closed since `since` with the invoices billing issued for it.

    An invoice names its deal by either CRM's id (a synced deal's HubSpot copy included). A deal's
    billed amount is the subtotal of its invoices that were not voided; if all were voided, of the
    last one, so a voided-and-not-reissued invoice shows as `voided`, not as a missing one.
    """
    won = deals.filter(pl.col("is_won").fill_null(False) & (pl.col("close_date") >= since))
    aliases = pl.concat(
        [
            won.select("deal_key", alias=pl.col("deal_id")),
            won.filter(pl.col("hubspot_deal_id").is_not_null()).select("deal_key", alias=pl.col("hubspot_deal_id")),
        ]
    )
    void = pl.col("status") == "void"
    billed = (
        invoices.join(aliases, left_on="crm_deal_id", right_on="alias")
        .group_by("deal_key")
        .agg(
            billed_cents=pl.when(void.all())
            .then(pl.col("subtotal_cents").sort_by("issued_at").last())
            .otherwise(pl.col("subtotal_cents").filter(~void).sum()),
            voided=void.all(),
            invoices=pl.len(),
        )
    )
    rate = pl.col("amount_usd") / pl.col("amount")
    per_deal = won.join(billed, on="deal_key", how="left").select(
        "deal_key",
        "close_date",
        "amount",
        "currency",
        "amount_usd",
        billed_usd=(pl.col("billed_cents").fill_null(0) / 100 * rate).round(2),
        status=pl.when(pl.col("invoices").is_null())
        .then(pl.lit("not billed"))
        .when(pl.col("voided"))
        .then(pl.lit("voided"))
        .when((pl.col("billed_cents") - (pl.col("amount") * 100).round()).abs() > 0)
        .then(pl.lit("amount differs"))
        .otherwise(pl.lit("billed")),
    )
    return Reconciliation(per_deal.sort("close_date", "deal_key"), since)


# What every mart shares: a daily partition of the picture at the day's end, in the revenue group.
MART_DEFAULTS = {
    "group_name": "revenue",
    "kinds": {"polars"},
    "owners": OWNERS,
    "partitions_def": DAILY_INGESTION,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "metadata": {"partition_expr": PARTITION_COLUMN},
}


@dg.asset(
    key=PIPELINE_KEY,
    description=(
        "Every deal as of the end of each day, HubSpot deals and Salesforce opportunities in one model: the "
        "stage mapped onto one funnel (stage_mapping.csv), the amount in USD from the currency rates, the account "
        "from the account identity, the channel its lead came from (channel_mapping.csv). A HubSpot deal synced "
        "from a Salesforce opportunity is counted once, as the opportunity."
    ),
    ins={
        "hubspot_deals": dg.AssetIn(HUBSPOT_DEALS),
        "salesforce_opportunities": dg.AssetIn(SALESFORCE_OPPORTUNITIES),
        "identity": dg.AssetIn(IDENTITY_KEY),
        "billing_invoices": dg.AssetIn(BILLING_INVOICES),
    },
    check_specs=[
        dg.AssetCheckSpec(
            STAGES_MAPPED,
            asset=PIPELINE_KEY,
            blocking=True,
            description="Every deal's stage is in stage_mapping.csv; fails naming unmapped stages and their counts.",
        ),
        dg.AssetCheckSpec(
            AMOUNTS_CONVERTED,
            asset=PIPELINE_KEY,
            blocking=True,
            description="Every amount has a USD rate for its currency and date; fails naming currencies and counts.",
        ),
        dg.AssetCheckSpec(
            WON_REVENUE_BILLED,
            asset=PIPELINE_KEY,
            description=(
                "Won revenue equals what billing invoiced for the won deals, within `billing_tolerance`, over the "
                "deals closed since both the CRM and billing states have history."
            ),
        ),
    ],
    required_resource_keys={"reference"},
    **MART_DEFAULTS,
)
def pipeline(
    context: dg.AssetExecutionContext,
    config: PipelineConfig,
    hubspot_deals: pl.LazyFrame,
    salesforce_opportunities: pl.LazyFrame,
    identity: pl.LazyFrame,
    billing_invoices: pl.LazyFrame,
):
    reference: ReferenceTables = context.resources.reference
    rates = reference.read("currency_rates", RATES_SCHEMA)
    deals = pipeline_frame(
        hubspot_deals,
        salesforce_opportunities,
        identity,
        STAGE_MAPPING,
        rates,
        CHANNEL_MAPPING,
    ).collect(engine="streaming")
    describe_each_day(
        context,
        deals,
        lambda day_deals, _: {
            "deals": day_deals.height,
            "open_pipeline_usd": round(day_deals.filter(~pl.col("is_closed").fill_null(False))["amount_usd"].sum(), 2),
            "synced_deals_counted_once": day_deals["hubspot_deal_id"].drop_nulls().len(),
            "preview": dg.MetadataValue.md(markdown_table(day_deals)),
        },
    )
    yield dg.MaterializeResult(value=deals)
    yield _unmatched_check(
        STAGES_MAPPED, deals.filter(pl.col("unified_stage").is_null()), ["system", "pipeline", "stage"], "stage"
    )
    yield _unmatched_check(
        AMOUNTS_CONVERTED,
        deals.filter(pl.col("amount").is_not_null() & pl.col("amount_usd").is_null()),
        ["currency"],
        "currency",
    )
    last_day = context.partition_time_window.end.date() - timedelta(days=1)
    starts = [history_since(context.instance, key, last_day) for key in RECONCILED_STATES]
    since = max((start for start in starts if start), default=DAILY_INGESTION.start.date())
    on_last_day = pl.col(PARTITION_COLUMN) == last_day
    invoices = billing_invoices.filter(on_last_day).collect(engine="streaming")
    reconciliation = reconcile_won_revenue(deals.filter(on_last_day), invoices, since)
    yield _reconciliation_check(reconciliation, config.billing_tolerance)


def _reconciliation_check(reconciliation: Reconciliation, tolerance: float) -> dg.AssetCheckResult:
    by_status = reconciliation.deals.group_by("status").agg(
        deals=pl.len(), won_usd=pl.col("amount_usd").sum().round(2), billed_usd=pl.col("billed_usd").sum().round(2)
    )
    counts = ", ".join(f"{row['deals']} {row['status']}" for row in by_status.sort("status").to_dicts())
    won, billed = reconciliation.won_usd, reconciliation.billed_usd
    difference = won - billed
    return dg.AssetCheckResult(
        asset_key=PIPELINE_KEY,
        check_name=WON_REVENUE_BILLED,
        passed=reconciliation.within(tolerance),
        description=(
            f"{PIPELINE_KEY.to_user_string()}: won revenue {won:,.2f} USD, billed {billed:,.2f} USD "
            f"(difference {difference:,.2f}, tolerance {tolerance:.1%}) over {reconciliation.deals.height} deals "
            f"won since {reconciliation.since}: {counts or 'none'}."
        ),
        metadata={
            "won_usd": won,
            "billed_usd": billed,
            "difference_usd": round(difference, 2),
            "tolerance": tolerance,
            "since": reconciliation.since.isoformat(),
            "by_status": dg.MetadataValue.md(markdown_table(by_status)),
            "differences": dg.MetadataValue.md(
                markdown_table(reconciliation.deals.filter(pl.col("status") != "billed"), limit=20)
            ),
        },
    )


def _unmatched_check(name: str, failures: pl.DataFrame, by: list[str], field: str) -> dg.AssetCheckResult:
    """A check that fails on `failures`, naming the asset, the field and the count per value."""
    counts = failures.group_by(by).agg(deals=pl.len(), days=pl.col(PARTITION_COLUMN).n_unique()).sort(by)
    description = (
        f"{PIPELINE_KEY.to_user_string()}: {field}: {failures.height} deal-days without a match ("
        + "; ".join(f"{'/'.join(str(row[c]) for c in by)}: {row['deals']}" for row in counts.head(10).to_dicts())
        + ")"
        if failures.height
        else f"Every {field} matched."
    )
    return dg.AssetCheckResult(
        asset_key=PIPELINE_KEY,
        check_name=name,
        passed=failures.height == 0,
        description=description,
        metadata={"failed_rows": failures.height, "by_value": dg.MetadataValue.md(markdown_table(counts))},
    )


def segment_of(employees: pl.Expr) -> pl.Expr:
    """The sales segment of an account by its head count (`SEGMENTS`); "Unknown" without one."""
    segment = pl.when(employees.is_null()).then(pl.lit(UNKNOWN_SEGMENT))
    for name, below in SEGMENTS[:-1]:
        segment = segment.when(employees < below).then(pl.lit(name))
    return segment.otherwise(pl.lit(SEGMENTS[-1][0]))


def _records_of(identity: pl.LazyFrame, system: str, records: pl.LazyFrame, id_column: pl.Expr) -> pl.LazyFrame:
    """`records` of `system` with the account each belongs to, per day."""
    return _accounts_of(identity, system, "record_id").join(
        records.with_columns(id_column.alias("record_id")), on=[PARTITION_COLUMN, "record_id"]
    )


def accounts_frame(
    identity: pl.LazyFrame,
    salesforce_accounts: pl.LazyFrame,
    salesforce_users: pl.LazyFrame,
    hubspot_companies: pl.LazyFrame,
    billing_invoices: pl.LazyFrame,
    deals: pl.LazyFrame,
    rates: pl.DataFrame,
) -> pl.LazyFrame:
    """One row per account and day: who it is (Salesforce first, then HubSpot, then billing), its owner,
    industry and lifecycle stage, ARR from billing, open pipeline and won revenue, and its last activity.

    ARR is the subtotal of the invoices issued in the 365 days up to the day, void ones excepted, in USD
    at the rate of each invoice's issue date.
    """
    keys = [PARTITION_COLUMN, "account_id"]
    users = salesforce_users.select(PARTITION_COLUMN, pl.col("id").alias("OwnerId"), pl.col("Name").alias("owner"))
    salesforce = (
        _records_of(identity, "salesforce", salesforce_accounts, pl.col("id"))
        .join(users, on=[PARTITION_COLUMN, "OwnerId"], how="left")
        .group_by(keys)
        .agg(
            salesforce_name=pl.col("Name").first(),
            salesforce_owner=pl.col("owner").first(),
            salesforce_industry=pl.col("Industry").first(),
            salesforce_employees=pl.col("NumberOfEmployees").first(),
            salesforce_changed_at=pl.col("changed_at").max(),
        )
    )
    hubspot = (
        _records_of(identity, "hubspot", hubspot_companies, pl.col("id").cast(pl.Utf8))
        .group_by(keys)
        .agg(
            hubspot_name=pl.col("name").first(),
            hubspot_owner=pl.col("hubspot_owner_id").first().cast(pl.Utf8),
            hubspot_industry=pl.col("industry").first(),
            hubspot_employees=pl.col("numberofemployees").first(),
            lifecycle_stage=pl.col("lifecyclestage").first(),
            hubspot_changed_at=pl.col("changed_at").max(),
        )
    )
    day_start = pl.col(PARTITION_COLUMN).cast(pl.Datetime("us", "UTC"))
    invoices = (
        _records_of(identity, "billing", billing_invoices, pl.col("billing_account_id"))
        .with_columns(issued_on=pl.col("issued_at").dt.date())
        .pipe(with_usd_rate, rates, "issued_on")
        .with_columns(
            in_arr_window=(pl.col("status") != "void")
            & (pl.col("issued_at") < day_start + pl.duration(days=1))
            & (pl.col("issued_at") >= day_start - pl.duration(days=ARR_WINDOW_DAYS - 1))
        )
        .group_by(keys)
        .agg(
            billing_name=pl.col("billing_account_name").first(),
            arr_usd=pl.when("in_arr_window").then(pl.col("subtotal_cents") / 100 * pl.col("usd_per_unit")).sum(),
            billing_changed_at=pl.col("changed_at").max().cast(pl.Datetime("ms", "UTC")),
        )
    )
    pipeline_totals = (
        deals.filter(pl.col("account_id").is_not_null())
        .group_by(keys)
        .agg(
            open_pipeline_usd=pl.when(~pl.col("is_closed").fill_null(False)).then("amount_usd").sum(),
            won_revenue_usd=pl.when(pl.col("is_won").fill_null(False)).then("amount_usd").sum(),
            open_deals=(~pl.col("is_closed").fill_null(False)).sum().cast(pl.Int64),
            deals_changed_at=pl.col("changed_at").max(),
        )
    )
    members = identity.group_by(keys).agg(
        *((pl.col("system") == system).sum().cast(pl.Int64).alias(f"{system}_records") for system in SYSTEMS),
        low_confidence=(pl.col("confidence") == "low").any(),
    )
    joined = members
    for part in (salesforce, hubspot, invoices, pipeline_totals):
        joined = joined.join(part, on=keys, how="left")
    money = ["arr_usd", "open_pipeline_usd", "won_revenue_usd"]
    return joined.with_columns(pl.col(*money).fill_null(0.0).round(2), pl.col("open_deals").fill_null(0)).select(
        PARTITION_COLUMN,
        "account_id",
        name=pl.coalesce("salesforce_name", "hubspot_name", "billing_name"),
        owner=pl.coalesce("salesforce_owner", "hubspot_owner"),
        industry=pl.coalesce("salesforce_industry", "hubspot_industry"),
        employees=pl.coalesce("salesforce_employees", "hubspot_employees"),
        segment=segment_of(pl.coalesce("salesforce_employees", "hubspot_employees")),
        lifecycle_stage=pl.coalesce(
            "lifecycle_stage",
            pl.when(pl.col("won_revenue_usd") > 0)
            .then(pl.lit("customer"))
            .when(pl.col("open_deals") > 0)
            .then(pl.lit("opportunity")),
        ),
        arr_usd="arr_usd",
        open_pipeline_usd="open_pipeline_usd",
        won_revenue_usd="won_revenue_usd",
        open_deals="open_deals",
        last_activity_at=pl.max_horizontal(
            "salesforce_changed_at", "hubspot_changed_at", "billing_changed_at", "deals_changed_at"
        ),
        salesforce_records="salesforce_records",
        hubspot_records="hubspot_records",
        billing_records="billing_records",
        low_confidence_match="low_confidence",
    )


@dg.asset(
    key=ACCOUNTS_KEY,
    description=(
        "One row per account (see revenue/core/account_identity) as of the end of each day: name, owner, industry, "
        "head count and segment (SMB below 200, Mid-Market below 1,000, Enterprise) and lifecycle stage (Salesforce "
        "first, then HubSpot), ARR from billing (invoices of the last 365 days, "
        "void ones excepted, in USD), open pipeline and won revenue in USD, and the last activity on any of its "
        "records or deals."
    ),
    ins={
        "identity": dg.AssetIn(IDENTITY_KEY),
        "salesforce_accounts": dg.AssetIn(SALESFORCE_ACCOUNTS),
        "salesforce_users": dg.AssetIn(SALESFORCE_USERS),
        "hubspot_companies": dg.AssetIn(HUBSPOT_COMPANIES),
        "billing_invoices": dg.AssetIn(BILLING_INVOICES),
        "deals": dg.AssetIn(PIPELINE_KEY),
    },
    required_resource_keys={"reference"},
    **MART_DEFAULTS,
)
def accounts(
    context: dg.AssetExecutionContext,
    identity: pl.LazyFrame,
    salesforce_accounts: pl.LazyFrame,
    salesforce_users: pl.LazyFrame,
    hubspot_companies: pl.LazyFrame,
    billing_invoices: pl.LazyFrame,
    deals: pl.LazyFrame,
) -> dg.MaterializeResult:
    reference: ReferenceTables = context.resources.reference
    frame = accounts_frame(
        identity,
        salesforce_accounts,
        salesforce_users,
        hubspot_companies,
        billing_invoices,
        deals,
        reference.read("currency_rates", RATES_SCHEMA),
    ).collect(engine="streaming")
    describe_each_day(
        context,
        frame,
        lambda day_accounts, _: {
            "accounts": day_accounts.height,
            "arr_usd": round(day_accounts["arr_usd"].sum(), 2),
            "open_pipeline_usd": round(day_accounts["open_pipeline_usd"].sum(), 2),
            "preview": dg.MetadataValue.md(markdown_table(day_accounts.sort("arr_usd", descending=True))),
        },
    )
    return dg.MaterializeResult(value=frame)


@dg.asset(
    key=ACCOUNT_RECORDS_KEY,
    description=(
        "One row per record of each system (Salesforce account, HubSpot company, billing account) and day, with "
        "its account's row of revenue/marts/accounts: what write-back routes send into each system's own records "
        "(the record's id is record_id, its system is system)."
    ),
    ins={"identity": dg.AssetIn(IDENTITY_KEY), "accounts": dg.AssetIn(ACCOUNTS_KEY)},
    **MART_DEFAULTS,
)
def account_records(
    context: dg.AssetExecutionContext, identity: pl.LazyFrame, accounts: pl.LazyFrame
) -> dg.MaterializeResult:
    frame = account_records_frame(identity, accounts).collect(engine="streaming")
    describe_each_day(
        context,
        frame,
        lambda day_records, _: {
            "records": day_records.height,
            "by_system": dg.MetadataValue.json(dict(day_records["system"].value_counts().sort("system").iter_rows())),
        },
    )
    return dg.MaterializeResult(value=frame)


def account_records_frame(identity: pl.LazyFrame, accounts: pl.LazyFrame) -> pl.LazyFrame:
    """Each day's identity rows (system, record_id, account_id) with their account's figures."""
    keys = [PARTITION_COLUMN, "account_id"]
    return (
        identity.select(*keys, "system", "record_id")
        .join(accounts, on=keys, how="inner")
        .sort(PARTITION_COLUMN, "system", "record_id")
    )
