"""Triggers fed by the webhook receiver's queue: `crm_change_sensor`."""

import dagster as dg

from revenue_pipelines.defs.triggers.sensors import crm_change_sensor
from revenue_pipelines.environment import get_environment

environment = get_environment()
defs = dg.Definitions(
    sensors=[crm_change_sensor(environment.receiver_queue_path, environment.crm_change_sensor_interval_seconds)]
)
