"""Routing rules and route assets: the file is validated with file, line and field; a wrong route is
left out and the rest load; the JSON Schema in docs/ is current; a route delivers a partition's
selected rows to its destination (here the sandbox's Slack), once per day, and its check compares
what was confirmed with what was selected."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import psycopg2
import pytest

from revenue_pipelines.definitions import defs
from revenue_pipelines.defs.routes.assets import ROWS_DELIVERED, delivered_check, route_asset, select_rows
from revenue_pipelines.defs.routes.rules import load_routes, schema_text
from revenue_pipelines.environment import DEFAULT_ROUTES_PATH, get_environment
from revenue_pipelines.lib.destinations import Delivery
from revenue_pipelines.lib.destinations.slack import ROUTE_EVENT
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines.sandbox.webhook_sink import WebhookSink
from revenue_pipelines_tests.conftest import END, day_range, read_layer, run_main_job

ROOT = Path(__file__).resolve().parents[1]
FIRST = END - timedelta(days=1)

GOOD = """\
routes:
  - name: enterprise
    source: revenue/marts/accounts
    destination: {kind: slack, title: Enterprise accounts}
    where: segment = 'Enterprise'
"""

WRONG = """\
routes:
  - name: fine
    source: revenue/marts/pipeline
    destination:
      kind: slack
      title: Deals
  - name: Bad-Name
    source: revenue/marts/accounts
    destination:
      kind: slack
      title: x
  - name: no_such_source
    source: revenue/marts/nothing
    destination: {kind: slack, title: x}
  - name: typo
    source: revenue/marts/accounts
    destination:
      kind: slack
      titel: x
  - name: unknown_kind
    source: revenue/marts/accounts
    destination:
      kind: carrier_pigeon
  - name: bad_where
    source: revenue/marts/accounts
    destination: {kind: slack, title: x}
    where: arr_usd >
  - name: fine
    source: revenue/marts/accounts
    destination: {kind: slack, title: twice}
"""


def write(tmp_path: Path, text: str, name: str = "routes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_projects_routes_file_is_valid():
    """With the settings the sandbox gives (production gives its own)."""
    settings = {"ROUTES_WEBHOOK_URL": "http://127.0.0.1:8000", "ROUTES_FILES_URL": "/srv/exports"}
    routes, problems = load_routes(DEFAULT_ROUTES_PATH, {**settings, "ROUTES_EXPORT_URL": "s3://exports/marts"})
    assert problems == [] and routes


def test_each_mistake_is_reported_at_its_file_line_and_field_and_the_good_route_is_kept(tmp_path):
    path = write(tmp_path, WRONG)

    routes, problems = load_routes(path)

    assert [route.name for route in routes] == ["fine"]
    found = {(problem.line, problem.field): problem.expected for problem in problems}
    assert all(problem.file == path for problem in problems)
    assert "should match pattern" in found[(7, "routes[1].name")]
    assert "must be one of revenue/marts/accounts" in found[(13, "routes[2].source")]
    assert found[(18, "routes[3].destination.title")] == "is required"
    assert found[(19, "routes[3].destination.titel")] == "is not a field here (a typo?)"
    assert "slack" in found[(23, "routes[4].destination")]
    assert found[(27, "routes[5].where")].startswith("not a Polars SQL condition")
    assert found[(28, "routes.name")] == "fine is already a route's name"
    assert len(problems) == 7
    assert str(problems[0]).startswith(f"{path}:7: routes[1].name: ")


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("routes: [\n  {name: a\n", 3, "not valid YAML"),
        ("- name: a\n", 1, "a list under routes:"),
        ("routes:\n  name: a\n", 1, "a list under routes:"),
    ],
)
def test_a_file_that_is_not_a_routes_file_says_so(tmp_path, text, line, expected):
    [problem] = load_routes(write(tmp_path, text))[1]
    assert problem.line == line and expected in problem.expected


def test_settings_of_the_environment_fill_in_values_and_an_unset_one_is_reported(tmp_path):
    text = """\
routes:
  - name: hook
    source: revenue/marts/accounts
    destination: {kind: webhook, url: "${HOOKS_URL}/accounts", batch_size: "${BATCH:-50}"}
  - name: unset
    source: revenue/marts/accounts
    destination:
      kind: webhook
      url: ${NOWHERE_URL}
"""
    routes, problems = load_routes(write(tmp_path, text), {"HOOKS_URL": "https://hooks.example.com"})
    [route] = routes
    assert (str(route.destination.url), route.destination.batch_size) == ("https://hooks.example.com/accounts", 50)
    [problem] = problems
    assert (problem.line, problem.field) == (9, "routes[1].destination.url")
    assert problem.expected == "${NOWHERE_URL} is not set in the environment"


def test_a_folder_of_files_is_read_in_name_order(tmp_path):
    write(tmp_path, GOOD, "b.yaml")
    write(
        tmp_path, GOOD.replace("name: enterprise", "name: all_accounts").replace("    where:", "    # where:"), "a.yaml"
    )
    routes, problems = load_routes(tmp_path)
    assert problems == [] and [route.name for route in routes] == ["all_accounts", "enterprise"]


def test_the_check_fails_on_rows_short_or_batches_in_the_dead_letter_store():
    def confirmed(rows: int, dead: tuple[str, ...] = ()) -> Delivery:
        return Delivery(uri="https://hooks.example.com/x", rows=rows, bytes=1, checksum="sha256:0", dead_letters=dead)

    assert delivered_check(
        {"2026-11-19": 3, "2026-11-20": 2}, {"2026-11-19": confirmed(3), "2026-11-20": confirmed(2)}
    ).passed
    short = delivered_check({"2026-11-20": 5}, {"2026-11-20": confirmed(3)})
    assert not short.passed and short.description == "2026-11-20: 5 selected, 3 confirmed"
    dead = delivered_check({"2026-11-20": 5}, {"2026-11-20": confirmed(0, ("dead/msg_1.json", "dead/msg_2.json"))})
    assert not dead.passed and "2 batch(es) in the dead-letter store: dead/msg_1.json" in dead.description
    assert dead.metadata["dead_letters"].value == 2


def test_the_json_schema_in_docs_is_current():
    assert (ROOT / "docs" / "routes.schema.json").read_text() == schema_text(), (
        "docs/routes.schema.json is stale: regenerate it with "
        "`uv run python -m revenue_pipelines.defs.routes.rules > docs/routes.schema.json`"
    )


def test_rows_are_selected_by_condition_and_columns_and_changed_rows_against_the_day_before(tmp_path):
    day, before = END, END - timedelta(days=1)
    rows = pl.LazyFrame(
        {
            PARTITION_COLUMN: [before, before, day, day, day],
            "account_id": ["a", "b", "a", "b", "c"],
            "segment": ["Enterprise", "Enterprise", "Enterprise", "Enterprise", "SMB"],
            "arr_usd": [10.0, 20.0, 10.0, 25.0, 5.0],
        }
    )
    [route], _ = load_routes(
        write(
            tmp_path,
            "routes:\n  - name: r\n    source: revenue/marts/accounts\n    destination: {kind: slack, title: t}\n"
            "    columns: [account_id, arr_usd]\n    where: segment = 'Enterprise'\n    send: changed_rows\n",
        )
    )
    assert select_rows(rows, route, day).to_dicts() == [{"account_id": "b", "arr_usd": 25.0}]
    every = route.model_copy(update={"send": "every_partition"})
    assert select_rows(rows, every, day)["account_id"].to_list() == ["a", "b"]

    unknown = route.model_copy(update={"columns": ["account_id", "revenue"]})
    with pytest.raises(dg.Failure, match=r"revenue/marts/accounts has no column revenue\. Its columns: "):
        select_rows(rows, unknown, day)


TWO_ROUTES = """\
routes:
  - name: enterprise
    source: revenue/marts/accounts
    destination: {kind: slack, title: Enterprise accounts}
    columns: [account_id, name, segment]
    where: segment = 'Enterprise'
  - name: enterprise_table
    source: revenue/marts/accounts
    destination: {kind: postgres, table: enterprise_accounts, schema: routes, key: [ingestion_date, account_id]}
    columns: [ingestion_date, account_id, name, arr_usd]
    where: segment = 'Enterprise'
  - name: enterprise_hook
    source: revenue/marts/accounts
    destination: {kind: webhook, url: "SINK/enterprise", batch_size: 10}
    columns: [ingestion_date, account_id, arr_usd]
    where: segment = 'Enterprise'
    send: changed_rows
  - name: company_arr
    source: revenue/marts/account_records
    destination: {kind: hubspot, id_column: record_id, properties: {arr_usd: arr_usd, revenue_segment: segment}}
    where: system = 'hubspot'
"""


def test_routes_deliver_each_days_selected_rows_once_and_their_checks_compare_them(
    sandbox_factory, monkeypatch, tmp_path, postgres
):
    """A Slack message per day (a re-run updates it), a PostgreSQL table (a re-run changes no row) and
    signed webhook batches of the rows changed since the day before (a re-run sends the same ids), and
    each HubSpot company's account figures written back into its own properties (a re-run writes none)."""
    sandbox = sandbox_factory(seed=11, companies=40, days=2, bigquery=True)
    sandbox.hubspot.add_property("companies", "arr_usd", None, type="number")  # custom properties made for it
    sandbox.hubspot.add_property("companies", "revenue_segment", None, type="string")
    sink = WebhookSink()
    routes_db = {name.replace("DAGSTER_PG_", "ROUTES_PG_"): value for name, value in postgres.items()}
    env = {
        "REVENUE_PIPELINES_DATA_DIR": str(tmp_path / "data"),
        "ROUTE_WEBHOOK_SECRETS": f"enterprise_hook={sink.secret}",
        **routes_db,
    }
    with sink:
        routes, _ = load_routes(write(tmp_path, TWO_ROUTES.replace("SINK", sink.url)))
        assets = [route_asset(route) for route in routes]
        keys = [asset.key.to_user_string() for asset in assets]
        assert keys == [
            "routes/slack/enterprise",
            "routes/postgres/enterprise_table",
            "routes/webhook/enterprise_hook",
            "routes/hubspot/company_arr",
        ]
        assert {asset.group_names_by_key[asset.key] for asset in assets} == {"routes"}
        with dg.DagsterInstance.ephemeral() as instance:
            environment, result = run_main_job(sandbox, monkeypatch, instance, FIRST, END, env=env)
            assert result.success
            runs = [
                dg.materialize(
                    [*defs().assets, *assets],
                    selection=[asset.key for asset in assets],
                    resources=environment.resources(),
                    instance=instance,
                    tags=day_range(FIRST, END),
                )
                for _ in range(2)  # the second time updates the two messages and no row
            ]
    assert all(run.success for run in runs)

    accounts = read_layer(tmp_path / "data", "revenue", "marts", "accounts")
    enterprise = accounts.filter(pl.col("segment") == "Enterprise")
    on_end = enterprise.filter(pl.col(PARTITION_COLUMN) == END)
    assert on_end.height > 0
    messages = {
        message.metadata["event_payload"]["key"]: message
        for message in sandbox.slack.messages("revenue")
        if message.metadata and message.metadata.get("event_type") == ROUTE_EVENT
    }
    assert sorted(messages) == [f"enterprise/{FIRST}", f"enterprise/{END}"]
    assert all(message.edits == 1 for message in messages.values())
    assert f"{on_end.height:,} row" in messages[f"enterprise/{END}"].blocks[0]["text"]["text"]
    shown = messages[f"enterprise/{END}"].blocks[1]["text"]["text"]
    assert all(account_id in shown for account_id in on_end["account_id"].head(15).to_list())

    with psycopg2.connect(**connection(postgres)) as connection_, connection_.cursor() as cursor:
        cursor.execute("SELECT ingestion_date, account_id, name, arr_usd FROM routes.enterprise_accounts")
        table = sorted(cursor.fetchall())
    expected = enterprise.select(PARTITION_COLUMN, "account_id", "name", "arr_usd").sort(PARTITION_COLUMN, "account_id")
    assert table == expected.rows()
    again = runs[1].asset_materializations_for_node("routes__postgres__enterprise_table")[0].metadata["answers"].value
    assert all(answer["inserted"] == answer["updated"] == 0 for answer in again.values())

    # The webhook got each day's changed rows once, every batch verified by its signature.
    before = enterprise.with_columns(pl.col(PARTITION_COLUMN) + pl.duration(days=1)).select(
        PARTITION_COLUMN, "account_id", "arr_usd"
    )
    changed = enterprise.select(PARTITION_COLUMN, "account_id", "arr_usd").join(
        before, on=[PARTITION_COLUMN, "account_id", "arr_usd"], how="anti"
    )
    assert 0 < changed.height < enterprise.height
    got = pl.DataFrame(sink.rows("/enterprise")).with_columns(pl.col(PARTITION_COLUMN).str.to_date())
    assert got.sort(PARTITION_COLUMN, "account_id").equals(changed.sort(PARTITION_COLUMN, "account_id"))
    assert sink.duplicates == len(sink.accepted())  # the re-run sent the same batches, with the same ids

    # Each live HubSpot company holds its account's figures of the last day; the re-run wrote nothing.
    records = read_layer(tmp_path / "data", "revenue", "marts", "account_records").filter(pl.col("system") == "hubspot")
    last = records.filter(pl.col(PARTITION_COLUMN) == END).select(
        pl.col("record_id").alias("id"), pl.col("arr_usd").alias("expected_arr"), "segment"
    )
    truth = sandbox.hubspot.truth("companies").with_columns(pl.col("id").cast(pl.Utf8)).join(last, on="id")
    assert truth.height == last.height > 0
    assert truth["arr_usd"].cast(pl.Float64).to_list() == truth["expected_arr"].to_list()
    assert truth["revenue_segment"].to_list() == truth["segment"].to_list()
    written = runs[1].asset_materializations_for_node("routes__hubspot__company_arr")[0].metadata["answer"].value
    assert written["updated"] == 0 and written["changed"] == 0

    for run in runs:
        checks = run.get_asset_check_evaluations()
        evaluations = {e.asset_key.path[1]: e for e in checks if e.check_name == ROWS_DELIVERED}
        assert all(e.passed for e in evaluations.values()) and len(evaluations) == 4
        # HubSpot keeps one value per property: a range writes its last day only.
        assert evaluations["hubspot"].metadata["rows_confirmed"].value == last.height
        assert evaluations["slack"].metadata["rows_confirmed"].value == enterprise.height
        assert evaluations["postgres"].metadata["rows_confirmed"].value == enterprise.height
        assert evaluations["webhook"].metadata["rows_confirmed"].value == changed.height


def connection(postgres: dict[str, str]) -> dict[str, str]:
    return {
        "host": postgres["DAGSTER_PG_HOST"],
        "port": postgres["DAGSTER_PG_PORT"],
        "dbname": postgres["DAGSTER_PG_DB"],
        "user": postgres["DAGSTER_PG_USERNAME"],
        "password": postgres["DAGSTER_PG_PASSWORD"],
    }


def test_the_code_location_loads_without_the_wrong_routes_and_says_why(tmp_path, monkeypatch, caplog):
    """What `definitions.py` does with the file at load: the good route becomes an asset, each wrong
    one is a warning naming its file and line, and nothing raises."""
    import importlib

    from revenue_pipelines.defs.routes import definitions as routes_definitions

    monkeypatch.setenv("REVENUE_PIPELINES_ROUTES", str(write(tmp_path, WRONG)))
    get_environment.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="revenue_pipelines.routes"):
            loaded = importlib.reload(routes_definitions).defs
        assert [asset.key.to_user_string() for asset in loaded.assets] == ["routes/slack/fine"]
        warnings = [record.getMessage() for record in caplog.records]
        assert len(warnings) == 7 and all(message.startswith("a route is left out: ") for message in warnings)
        assert f"{tmp_path / 'routes.yaml'}:13: routes[2].source" in warnings[1]
    finally:
        monkeypatch.undo()
        get_environment.cache_clear()
        importlib.reload(routes_definitions)
