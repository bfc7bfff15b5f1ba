"""`revenue/core/account_identity`: one account id for every Salesforce account, HubSpot company and
billing account, day by day, with the links it refused in `revenue/core/account_conflicts`."""

from datetime import date

import dagster as dg
import polars as pl

from revenue_pipelines.defs.revenue.resources import ReferenceTables
from revenue_pipelines.lib.account_matching import MAPPING, MAPPING_SCHEMA, SYSTEMS, match_accounts
from revenue_pipelines.lib.current_state import HISTORY_SINCE, StateWindow, previous_day_input
from revenue_pipelines.lib.identity import normalized_domain, normalized_name, salesforce_id_18
from revenue_pipelines.lib.metadata import describe_each_day, markdown_table, rows_and_preview
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.raw_assets import CHANGED_AT, OWNERS

IDENTITY_KEY = dg.AssetKey(["revenue", "core", "account_identity"])
CONFLICTS_KEY = dg.AssetKey(["revenue", "core", "account_conflicts"])
SALESFORCE_ACCOUNTS = dg.AssetKey(["salesforce", "core", "accounts"])
HUBSPOT_COMPANIES = dg.AssetKey(["hubspot", "core", "companies"])
BILLING_INVOICES = dg.AssetKey(["bigquery", "core", "billing_invoices"])
ONE_ACCOUNT_PER_RECORD = "one_account_per_record"
SALESFORCE_ACCOUNTS_MATCHED = "salesforce_accounts_matched"
MAPPING_ROWS_FOUND = "mapping_rows_found"


def account_records(
    salesforce_accounts: pl.DataFrame, hubspot_companies: pl.DataFrame, billing_invoices: pl.DataFrame
) -> pl.DataFrame:
    """Every account-like record of the three systems, with the keys the matching rules compare."""
    salesforce = salesforce_accounts.select(
        system=pl.lit("salesforce"),
        record_id=salesforce_id_18(pl.col("id")),
        name=pl.col("Name"),
        domain=normalized_domain(pl.col("Website")),
        match_name=normalized_name(pl.col("Name")),
        linked_system=pl.lit(None, pl.Utf8),  # External_Account_Id__c may name a record of any other system
        linked_id=pl.col("External_Account_Id__c").str.strip_chars(),
    )
    hubspot = hubspot_companies.select(
        system=pl.lit("hubspot"),
        record_id=pl.col("id").cast(pl.Utf8),
        name=pl.col("name"),
        domain=normalized_domain(pl.col("domain")),
        match_name=normalized_name(pl.col("name")),
        linked_system=pl.lit(None, pl.Utf8),
        linked_id=pl.lit(None, pl.Utf8),
    )
    crm = pl.col("crm_source")
    billing = (
        billing_invoices.sort(CHANGED_AT)
        .group_by("billing_account_id")
        .last()  # the account as its latest invoice shows it
        .select(
            system=pl.lit("billing"),
            record_id=pl.col("billing_account_id"),
            name=pl.col("billing_account_name"),
            domain=normalized_domain(pl.col("billing_email")),
            match_name=normalized_name(pl.col("billing_account_name")),
            linked_system=crm,
            linked_id=pl.when(crm == "salesforce")
            .then(salesforce_id_18(pl.col("external_account_id")))
            .otherwise(pl.col("external_account_id")),
        )
    )
    return pl.concat([salesforce, hubspot, billing], how="vertical_relaxed")


def checked_mapping(mapping: pl.DataFrame) -> pl.DataFrame:
    """The mapping with Salesforce ids in 18 characters; a Failure naming every row it cannot use."""
    checked = mapping.with_columns(
        normalized_id=pl.when(pl.col("system") == "salesforce")
        .then(salesforce_id_18(pl.col("record_id")))
        .otherwise(pl.col("record_id").str.strip_chars())
    )
    bad_system = ~pl.col("system").is_in(SYSTEMS).fill_null(False)
    bad_id = ~bad_system & (pl.col("normalized_id").is_null() | pl.col("account_key").is_null())
    problems = [
        (f"system (not one of {', '.join(SYSTEMS)})", checked.filter(bad_system)),
        ("record_id or account_key (empty, or not a Salesforce id)", checked.filter(bad_id)),
    ]
    problems = [(field, rows.drop("normalized_id")) for field, rows in problems if rows.height]
    if problems:
        detail = "; ".join(f"{rows.height} rows with a bad {field}" for field, rows in problems)
        raise dg.Failure(
            description=(
                f"{IDENTITY_KEY.to_user_string()}: the account mapping has {detail}. Fix the mapping table; nothing "
                "was matched."
            ),
            metadata={
                "rejected_rows": dg.MetadataValue.md(markdown_table(pl.concat([rows for _, rows in problems]), 50))
            },
            allow_retries=False,
        )
    return checked.select("account_key", "system", pl.col("normalized_id").alias("record_id"))


_COMMON = {
    "group_name": "revenue",
    "kinds": {"polars"},
    "owners": OWNERS,
    "partitions_def": DAILY_INGESTION,
    "metadata": {"partition_expr": PARTITION_COLUMN},
}


@dg.multi_asset(
    name="revenue_account_identity",
    outs={
        "identity": dg.AssetOut.from_spec(
            dg.AssetSpec(
                IDENTITY_KEY,
                description=(
                    "One account id per real-world customer for every Salesforce account, HubSpot company and "
                    "billing account, as of the end of each day. Matched by the mapping table, then external ids, "
                    "then web domain, then name (low confidence); `match_rule` and `confidence` say which. A record "
                    "keeps its account id from day to day."
                ),
                **_COMMON,
            ),
            dagster_type=pl.DataFrame,
        ),
        "conflicts": dg.AssetOut.from_spec(
            dg.AssetSpec(
                CONFLICTS_KEY,
                description=(
                    "Links the account matching refused because they were ambiguous (a domain shared by two "
                    "Salesforce accounts, two accounts that already had ids), one row per side, for a person to "
                    "settle in the mapping table."
                ),
                **_COMMON,
            ),
            dagster_type=pl.DataFrame,
        ),
    },
    ins={
        "salesforce_accounts": dg.AssetIn(SALESFORCE_ACCOUNTS),
        "hubspot_companies": dg.AssetIn(HUBSPOT_COMPANIES),
        "billing_invoices": dg.AssetIn(BILLING_INVOICES),
        "previous": previous_day_input(IDENTITY_KEY),
    },
    check_specs=[
        dg.AssetCheckSpec(
            ONE_ACCOUNT_PER_RECORD,
            asset=IDENTITY_KEY,
            blocking=True,
            description="No record belongs to two accounts, in the output or in the mapping table; blocks the marts.",
        ),
        dg.AssetCheckSpec(
            SALESFORCE_ACCOUNTS_MATCHED,
            asset=IDENTITY_KEY,
            description="Lists the Salesforce accounts no other record matched (warns; they still get an account).",
        ),
        dg.AssetCheckSpec(
            MAPPING_ROWS_FOUND,
            asset=IDENTITY_KEY,
            description=(
                "Lists the mapping table's rows that name no record of the last day, a typo or a deleted record "
                "(warns; such a row links nothing)."
            ),
        ),
    ],
    partitions_def=DAILY_INGESTION,
    backfill_policy=dg.BackfillPolicy.single_run(),
    required_resource_keys={"reference"},
)
def account_identity(
    context: dg.AssetExecutionContext,
    salesforce_accounts: pl.DataFrame,
    hubspot_companies: pl.DataFrame,
    billing_invoices: pl.DataFrame,
    previous: pl.DataFrame | None,
):
    window = StateWindow.of(context, IDENTITY_KEY, previous)
    reference: ReferenceTables = context.resources.reference
    mapping = checked_mapping(reference.read("account_mapping", MAPPING_SCHEMA))
    prior = window.previous
    identities, conflicts = [], []
    for day in window.days:
        on_day = pl.col(PARTITION_COLUMN) == day
        records = account_records(
            salesforce_accounts.filter(on_day), hubspot_companies.filter(on_day), billing_invoices.filter(on_day)
        )
        matched = match_accounts(records, mapping, prior)
        prior = matched.identity
        identities.append(matched.identity.with_columns(pl.lit(day).alias(PARTITION_COLUMN)))
        conflicts.append(matched.conflicts.with_columns(pl.lit(day).alias(PARTITION_COLUMN)))
    identity, conflict = pl.concat(identities), pl.concat(conflicts)
    latest = identity.filter(pl.col(PARTITION_COLUMN) == window.days[-1])

    def identity_of(day_identity: pl.DataFrame, day: date) -> dict[str, object]:
        rules = day_identity.group_by("match_rule").len().sort("match_rule", nulls_last=True)
        day_conflicts = conflict.filter(pl.col(PARTITION_COLUMN) == day)
        return {
            "accounts": day_identity["account_id"].n_unique(),
            "records": day_identity.height,
            "as_of": day.isoformat(),
            "conflicts": day_conflicts.select("rule", "match_key").n_unique(),
            "records_by_rule": dg.MetadataValue.md(
                markdown_table(rules.with_columns(pl.col("match_rule").fill_null("unmatched")))
            ),
            "preview": dg.MetadataValue.md(markdown_table(day_identity)),
        }

    describe_each_day(context, identity, identity_of, IDENTITY_KEY)
    describe_each_day(context, conflict, rows_and_preview, CONFLICTS_KEY)
    yield dg.MaterializeResult(
        asset_key=IDENTITY_KEY,
        value=identity,
        metadata={"mapping_rows": mapping.height, HISTORY_SINCE: window.history_since.isoformat()},
    )
    yield dg.MaterializeResult(asset_key=CONFLICTS_KEY, value=conflict)
    yield one_account_per_record(identity, conflict)
    yield salesforce_accounts_matched(latest)
    yield mapping_rows_found(mapping, latest)


def one_account_per_record(identity: pl.DataFrame, conflicts: pl.DataFrame) -> dg.AssetCheckResult:
    keys = [PARTITION_COLUMN, "system", "record_id"]
    doubled = identity.filter(pl.len().over(keys) > 1).select(*keys, "account_id")
    claimed_twice = conflicts.filter(pl.col("rule") == MAPPING).select(*keys, pl.col("match_key").alias("account_key"))
    failures = doubled.height + claimed_twice.height
    description = (
        f"{IDENTITY_KEY.to_user_string()}: record_id: {doubled.select(keys).n_unique()} records in two accounts, "
        f"{claimed_twice.select(keys).n_unique()} records under two account_keys of the mapping table"
        if failures
        else "Every record is in exactly one account."
    )
    return dg.AssetCheckResult(
        asset_key=IDENTITY_KEY,
        check_name=ONE_ACCOUNT_PER_RECORD,
        passed=failures == 0,
        description=description,
        metadata={
            "records_in_two_accounts": doubled.select(keys).n_unique(),
            "records_claimed_twice_by_mapping": claimed_twice.select(keys).n_unique(),
            "failures": dg.MetadataValue.md(markdown_table(pl.concat([doubled, claimed_twice], how="diagonal"))),
        },
    )


def salesforce_accounts_matched(latest: pl.DataFrame) -> dg.AssetCheckResult:
    alone = latest.filter((pl.col("system") == "salesforce") & pl.col("match_rule").is_null())
    return dg.AssetCheckResult(
        asset_key=IDENTITY_KEY,
        check_name=SALESFORCE_ACCOUNTS_MATCHED,
        passed=alone.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{alone.height} Salesforce accounts matched no HubSpot company or billing account"
            if alone.height
            else "Every Salesforce account matched another record."
        ),
        metadata={
            "unmatched_salesforce_accounts": alone.height,
            "accounts": dg.MetadataValue.md(markdown_table(alone.select("record_id", "name", "domain"), limit=50)),
        },
    )


def mapping_rows_found(mapping: pl.DataFrame, latest: pl.DataFrame) -> dg.AssetCheckResult:
    """Warns with the mapping rows that name no record in `latest`, the identity of one day."""
    missing = mapping.join(latest, on=["system", "record_id"], how="anti")
    return dg.AssetCheckResult(
        asset_key=IDENTITY_KEY,
        check_name=MAPPING_ROWS_FOUND,
        passed=missing.height == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{IDENTITY_KEY.to_user_string()}: record_id: {missing.height} of the mapping table's {mapping.height} "
            "rows name no record; they link nothing"
            if missing.height
            else f"All {mapping.height} rows of the mapping table name a record."
        ),
        metadata={
            "rows_without_a_record": missing.height,
            "rows": dg.MetadataValue.md(markdown_table(missing, limit=50)),
        },
    )
