"""Routes: each routing rule of the routes file(s) becomes an asset `routes/<kind>/<name>`.

A route the file gets wrong, or whose destination kind has no writer in this environment (e.g.
Slack switched off), is left out with a warning that says why; the rest of the code location loads.
`make test` loads the project's routes file strictly, so a mistake there fails CI, not production.
"""

import logging

import dagster as dg

from revenue_pipelines.defs.routes.assets import route_asset, writer_key
from revenue_pipelines.defs.routes.rules import load_routes
from revenue_pipelines.environment import ROUTE_SETTINGS, get_environment

log = logging.getLogger("revenue_pipelines.routes")

environment = get_environment()
routes, problems = load_routes(environment.routes_path, environment.config_variables)
for problem in problems:
    log.warning(f"a route is left out: {problem}")
served = []
for route in routes:
    if environment.route_writer(route.kind) is None:
        log.warning(f"route {route.name} is left out: no {route.kind} writer here ({ROUTE_SETTINGS[route.kind]})")
    else:
        served.append(route)

defs = dg.Definitions(
    assets=[route_asset(route) for route in served],
    resources={writer_key(kind): environment.route_writer(kind) for kind in {route.kind for route in served}},
)
