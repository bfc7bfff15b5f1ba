"""Triggers fed by the webhook receiver's queue: `crm_change_sensor`."""

from datetime import timedelta

import dagster as dg

from revenue_pipelines.defs.triggers.sensors import crm_change_sensor
from revenue_pipelines.environment import get_environment

environment = get_environment()
defs = dg.Definitions(
    sensors=[
        crm_change_sensor(
            environment.receiver_database_url,
            environment.crm_change_sensor_interval_seconds,
            timedelta(days=environment.receiver_retention_days),
        )
    ]
)
