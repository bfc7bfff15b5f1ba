"""The code location: every source's Definitions from the defs folder, plus the shared IO manager."""

from pathlib import Path

import dagster as dg

from revenue_pipelines.environment import get_environment


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources={"io_manager": get_environment().io_manager}),
    )
