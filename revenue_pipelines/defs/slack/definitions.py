"""Slack: the daily revenue digest and the run failure alerts; nothing when Slack is switched off."""

import dagster as dg

from revenue_pipelines.defs.slack.assets import DIGEST_IO_MANAGER, daily_revenue_digest_asset
from revenue_pipelines.defs.slack.sensors import run_failure_alert
from revenue_pipelines.environment import get_environment

environment = get_environment()
defs = (
    dg.Definitions(
        assets=[daily_revenue_digest_asset()],
        sensors=[run_failure_alert(environment.webserver_url)],
        resources={"slack": environment.slack, DIGEST_IO_MANAGER: environment.slack_digest_io_manager},
    )
    if environment.slack
    else dg.Definitions()
)
