"""The BigQuery sources' SQL: files in `sql/`, with names as `${placeholders}` and values as `@parameters`.

A file names the tables it reads as `${project}.${dataset}.table`; each placeholder is filled only
with a name that passed BigQuery's naming rules. Everything else that varies (the window's bounds) is
a query parameter, bound by BigQuery, never spliced into the text. A file is checked when it is
loaded, so a placeholder or parameter the code does not supply fails definition load, not a run.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from string import Template

from google.cloud import bigquery

from revenue_pipelines.lib.bigquery import checked_name

SQL_DIRECTORY = Path(__file__).parent / "sql"
# The names a file may use, and the BigQuery rules each must meet.
NAME_KINDS = {"project": "project", "dataset": "dataset"}
_COMMENT = re.compile(r"--[^\n]*")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_PARAMETER = re.compile(r"@(\w+)")
# Python type -> BigQuery parameter type; datetime before date, bool before int (subclasses).
PARAMETER_TYPES = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (datetime, "TIMESTAMP"),
    (date, "DATE"),
    (str, "STRING"),
)


@dataclass(frozen=True)
class SqlFile:
    name: str
    template: Template
    parameters: frozenset[str]

    @classmethod
    def load(cls, name: str, parameters: set[str], directory: Path = SQL_DIRECTORY) -> "SqlFile":
        """`<directory>/<name>.sql`, which must use exactly `parameters` and no placeholder but NAME_KINDS'."""
        text = (directory / f"{name}.sql").read_text()
        template = Template(text)
        placeholders = set(template.get_identifiers())
        if not template.is_valid() or placeholders - set(NAME_KINDS):
            raise ValueError(
                f"sql/{name}.sql: placeholders may only be {sorted(NAME_KINDS)}; found {sorted(placeholders)}"
            )
        used = set(_PARAMETER.findall(_STRING.sub("''", _COMMENT.sub("", text))))
        if used != parameters:
            raise ValueError(f"sql/{name}.sql uses parameters {sorted(used)}, but its asset binds {sorted(parameters)}")
        return cls(name, template, frozenset(parameters))

    def render(self, **names: str) -> str:
        """The query text, each name checked against BigQuery's rules first."""
        checked = {placeholder: checked_name(NAME_KINDS[placeholder], value) for placeholder, value in names.items()}
        return self.template.substitute(checked)

    def bind(self, values: Mapping[str, object]) -> list[bigquery.ScalarQueryParameter]:
        """The query parameters: exactly this file's, typed from their Python values."""
        if set(values) != self.parameters:
            raise ValueError(f"sql/{self.name}.sql takes {sorted(self.parameters)}, not {sorted(values)}")
        return [query_parameter(name, value) for name, value in sorted(values.items())]


def query_parameter(name: str, value: object) -> bigquery.ScalarQueryParameter:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError(f"parameter {name}: a TIMESTAMP needs a time zone, got {value!r}")
    for python_type, bigquery_type in PARAMETER_TYPES:
        if isinstance(value, python_type):
            return bigquery.ScalarQueryParameter(name, bigquery_type, value)
    raise TypeError(f"parameter {name}: no BigQuery type for {type(value).__name__}")
