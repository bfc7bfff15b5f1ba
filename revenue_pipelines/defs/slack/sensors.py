"""Alerts: one Slack message per failed run, within a sensor interval of the failure.

The run failure sensor's cursor sees each run once, so a run never alerts twice. A failed blocking
check fails its step and so its run: the run's message names the check, its asset, and the fields
and counts from its description. A WARN check does not alert; the digest reports it.
"""

from dataclasses import dataclass

import dagster as dg

from revenue_pipelines.lib.slack import SlackResource

ALERT_INTERVAL_SECONDS = 30
ERROR_LINES = 5
TEXT_LIMIT = 2900  # under Slack's 3,000 characters per section text


@dataclass(frozen=True)
class FailedCheck:
    asset: str
    check: str
    description: str


@dataclass(frozen=True)
class FailedStep:
    step: str
    error: str


def alert_blocks(
    job: str, run_id: str, partitions: str | None, steps: list[FailedStep], checks: list[FailedCheck], url: str
) -> tuple[str, list[dict]]:
    """The alert for a failed run: a notification text and its Block Kit blocks."""
    title = f"{job} failed" + (f" for {partitions}" if partitions else "")
    lines = [f"*{step.step}*\n```{_first_lines(step.error)}```" for step in steps] or ["No step failed: see the run."]
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit("\n".join(lines))}},
    ]
    if checks:
        described = [f"*{check.asset}* `{check.check}`: {check.description}" for check in checks]
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _fit("Blocking checks failed:\n" + "\n".join(described))},
            }
        )
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{url}|Run {run_id[:8]}>"}]})
    return f"{title}: {', '.join(step.step for step in steps) or 'see the run'}", blocks


def _first_lines(error: str) -> str:
    return "\n".join(error.strip().splitlines()[:ERROR_LINES])[:1000]


def _fit(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def run_failure_alert(webserver_url: str) -> dg.SensorDefinition:
    """The sensor posting each failed run of this code location to the channel."""

    @dg.run_failure_sensor(
        name="slack_run_failure_alert",
        minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts one Slack message per failed run: the failing steps, their errors, failed blocking "
        "checks and a link to the run.",
    )
    def slack_run_failure_alert(context: dg.RunFailureSensorContext, slack: SlackResource) -> None:
        run = context.dagster_run
        steps = [
            FailedStep(
                event.step_key or "", event.event_specific_data.error.message if event.event_specific_data.error else ""
            )
            for event in context.get_step_failure_events()
        ]
        checks = []
        for record in context.instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records:
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR and evaluation.blocking:
                checks.append(
                    FailedCheck(
                        evaluation.asset_key.to_user_string(), evaluation.check_name, evaluation.description or ""
                    )
                )
        text, blocks = alert_blocks(
            run.job_name,
            run.run_id,
            _partitions(run.tags),
            steps,
            checks,
            f"{webserver_url.rstrip('/')}/runs/{run.run_id}",
        )
        slack.post(text, blocks, {"event_type": "revenue_run_failure", "event_payload": {"run_id": run.run_id}})

    return slack_run_failure_alert


def _partitions(tags: dict[str, str]) -> str | None:
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{start}..{end}" if start and end else None
