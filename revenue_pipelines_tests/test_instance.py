"""The production Dagster instance (deploy/dagster.yaml) against a real, throwaway PostgreSQL cluster."""

import shutil
from pathlib import Path

import dagster as dg
import psycopg2
import yaml

from revenue_pipelines_tests.conftest import END, HUBSPOT_ASSETS, day_range, hubspot_resource

PROJECT = Path(__file__).resolve().parents[1]
PRODUCTION_INSTANCE = PROJECT / "deploy" / "dagster.yaml"


def test_the_production_instance_keeps_runs_and_events_in_postgres(postgres, sandbox, tmp_path, monkeypatch):
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PRODUCTION_INSTANCE, home / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            HUBSPOT_ASSETS,
            instance=instance,
            resources={"hubspot": hubspot_resource(sandbox), "io_manager": dg.mem_io_manager},
            tags=day_range(END, END),
        )
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success

    connection = psycopg2.connect(
        host=postgres["DAGSTER_PG_HOST"],
        port=postgres["DAGSTER_PG_PORT"],
        dbname=postgres["DAGSTER_PG_DB"],
        user=postgres["DAGSTER_PG_USERNAME"],
        password=postgres["DAGSTER_PG_PASSWORD"],
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchone() == ("SUCCESS",)
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (result.run_id,),
        )
        assert cursor.fetchone()[0] == 2 * len(HUBSPOT_ASSETS)  # each raw table and its quarantine
    connection.close()


def test_production_and_local_instances_share_the_same_limits():
    local = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    production = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    assert production["concurrency"] == local["concurrency"]
    assert "storage" not in local  # the local instance is SQLite under DAGSTER_HOME
