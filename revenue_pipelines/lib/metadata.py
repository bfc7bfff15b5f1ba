"""Metadata people read in the Dagster UI."""

import polars as pl


def markdown_table(frame: pl.DataFrame, limit: int = 10) -> str:
    """The first `limit` rows of `frame` as a Markdown table (long values shortened)."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 60 else text[:57] + "..."

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.head(limit).iter_rows()]
    return "\n".join([header, rule, *rows])
