"""Routing rules: which mart goes where, declared in YAML (`revenue_pipelines/routes.yaml`, or every
`*.yaml` of a folder, `REVENUE_PIPELINES_ROUTES`), validated when definitions load.

A route names a source asset, a destination (a kind and its target), optionally the columns and a
row condition, and whether to send every partition's rows or only those changed since the day
before. A file's mistake is reported with its file, line, field and what was expected, and only
that route is left out: the rest of the code location loads (see `docs/routes.md`).

`python -m revenue_pipelines.defs.routes.rules` prints the JSON Schema of the file
(`docs/routes.schema.json`, kept current by a test).
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from revenue_pipelines.defs.revenue.marts import ACCOUNT_RECORDS_KEY, ACCOUNTS_KEY, PIPELINE_KEY
from revenue_pipelines.defs.revenue.metrics import ATTRIBUTION_KEY, METRICS_KEY
from revenue_pipelines.lib.config_files import ConfigProblem, load_items
from revenue_pipelines.lib.destinations.files import FilesDestination
from revenue_pipelines.lib.destinations.hubspot import HubSpotDestination
from revenue_pipelines.lib.destinations.postgres import PostgresDestination
from revenue_pipelines.lib.destinations.slack import SlackDestination
from revenue_pipelines.lib.destinations.webhook import WebhookDestination

ROUTABLE = {
    key.to_user_string(): key for key in (ACCOUNTS_KEY, ACCOUNT_RECORDS_KEY, PIPELINE_KEY, METRICS_KEY, ATTRIBUTION_KEY)
}
"""The assets a route may deliver: the marts, whose partitions are whole days as of the day's end."""
ROUTE_NAME = r"^[a-z][a-z0-9_]{0,62}$"
LIST_KEY = "routes"

Destination = Annotated[
    SlackDestination | WebhookDestination | FilesDestination | PostgresDestination | HubSpotDestination,
    Field(discriminator="kind"),
]


class Route(BaseModel):
    """One delivery: the asset `routes/<destination kind>/<name>`, downstream of `source`, with its partitions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ROUTE_NAME, description="Lowercase letters, digits and _; unique in the files.")
    description: str | None = Field(default=None, description="What the receivers use it for, shown in the UI.")
    source: str = Field(description=f"The asset delivered: one of {', '.join(ROUTABLE)}.")
    destination: Destination
    columns: list[str] | None = Field(
        default=None, min_length=1, description="The columns sent, in this order; all of them when left out."
    )
    where: str | None = Field(
        default=None,
        description="Only the rows for which this condition holds: a Polars SQL expression over the source's "
        "columns, e.g. \"segment = 'Enterprise' AND arr_usd >= 100000\". No subqueries, no statements.",
    )
    send: Literal["every_partition", "changed_rows"] = Field(
        default="every_partition",
        description="every_partition: each day's rows that match; changed_rows: only those of them that were "
        "not the same (in the columns sent) the day before.",
    )

    @field_validator("source")
    @classmethod
    def _routable(cls, source: str) -> str:
        if source not in ROUTABLE:
            raise ValueError(f"must be one of {', '.join(ROUTABLE)}")
        return source

    @field_validator("where")
    @classmethod
    def _an_expression(cls, where: str | None) -> str | None:
        if where is not None:
            condition(where)
        return where

    @field_validator("columns")
    @classmethod
    def _once_each(cls, columns: list[str] | None) -> list[str] | None:
        if columns and (repeated := sorted({name for name in columns if columns.count(name) > 1})):
            raise ValueError(f"a column is listed twice: {', '.join(repeated)}")
        return columns

    @property
    def kind(self) -> str:
        return self.destination.kind


class RoutesFile(BaseModel):
    """A routes file: a list of routes under `routes:`."""

    model_config = ConfigDict(extra="forbid", title="revenue_pipelines routes")

    routes: list[Route]


def condition(where: str) -> pl.Expr:
    """The row condition as a Polars expression; a ValueError saying why when it is not one."""
    try:
        return pl.sql_expr(where)
    except Exception as error:  # polars raises SQLInterfaceError / SQLSyntaxError / ComputeError
        raise ValueError(f"not a Polars SQL condition: {str(error).splitlines()[0]}") from None


def route_files(path: Path) -> list[Path]:
    """`path` itself, or every `*.yaml` in it (sorted), so a team can keep a file per receiver."""
    return sorted(path.glob("*.yaml")) if path.is_dir() else [path]


def load_routes(path: Path, variables: Mapping[str, str] | None = None) -> tuple[list[Route], list[ConfigProblem]]:
    """Every valid route of the file or folder at `path`, and every problem, each at its file and line.
    A route whose name another route has already taken is a problem too (its asset would collide).
    `${NAME}` in a value is the setting NAME of `variables`."""
    routes: list[Route] = []
    problems: list[ConfigProblem] = []
    for file in route_files(path):
        valid, found = load_items(file, LIST_KEY, Route, variables)
        problems += found
        for route, line in valid:
            if any(taken.name == route.name for taken in routes):
                problems.append(
                    ConfigProblem(file, line, f"{LIST_KEY}.name", f"{route.name} is already a route's name")
                )
            else:
                routes.append(route)
    return routes, problems


def schema_text() -> str:
    return json.dumps(RoutesFile.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
