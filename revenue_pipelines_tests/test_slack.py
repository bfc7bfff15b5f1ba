"""Slack end to end: the real slack_sdk against the sandbox's Slack, read back from its ground truth."""

import io
import socket
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from PIL import Image

from revenue_pipelines.defs.hubspot.assets import hubspot_deals
from revenue_pipelines.defs.slack import digest
from revenue_pipelines.defs.slack.assets import DIGEST_KEY
from revenue_pipelines.defs.slack.sensors import run_failure_alert
from revenue_pipelines.lib.slack import DIGEST_EVENT, SlackResource
from revenue_pipelines_tests.conftest import END, hubspot_resource, materialize_range, read_layer, run_main_job

FIRST = END - timedelta(days=2)


def _slack(sandbox, **overrides) -> SlackResource:
    env = sandbox.env()
    config = {"bot_token": env["SLACK_BOT_TOKEN"], "channel": env["SLACK_CHANNEL"], "api_url": env["SLACK_API_URL"]}
    return SlackResource(**{**config, **overrides})


def _digests(sandbox) -> dict[str, object]:
    """The channel's digest messages by day."""
    return {
        message.metadata["event_payload"]["day"]: message
        for message in sandbox.slack.messages("revenue")
        if message.metadata and message.metadata.get("event_type") == DIGEST_EVENT
    }


def test_one_digest_a_day_with_the_marts_figures_and_a_rerun_updates_it(sandbox_factory, monkeypatch, tmp_path):
    sandbox = sandbox_factory(seed=11, companies=40, days=3, bigquery=True)
    data = {"REVENUE_PIPELINES_DATA_DIR": str(tmp_path)}
    with dg.DagsterInstance.ephemeral() as instance:
        _, result = run_main_job(sandbox, monkeypatch, instance, FIRST, END, env=data)
        assert result.success, [event.message for event in result.all_events if event.is_failure]
        posted = _digests(sandbox)
        assert sorted(posted) == [f"{FIRST + timedelta(days=n)}" for n in range(3)]
        assert len([post for post in sandbox.slack.posts if post.metadata]) == 3

        # The figures and the deals won are the marts' of that day.
        metrics = read_layer(tmp_path, "revenue", "marts", "daily_revenue_metrics")
        pipeline = read_layer(tmp_path, "revenue", "marts", "pipeline")
        message = posted[f"{END}"]
        quality = digest.Quality(0, [], [])
        _, expected = digest.blocks(END, metrics, pipeline, quality)
        assert message.blocks[:4] == expected[:4]
        quality_line = message.blocks[4]["elements"][0]["text"]
        assert quality_line.startswith("Data quality: 0 rows quarantined")
        warned = {
            f"{e.asset_key.to_user_string()} {e.check_name}"
            for e in result.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.WARN
        }
        assert warned and all(name in quality_line for name in warned)

        # The chart in the message is the PNG kept beside the data, a readable image.
        chart_id = message.blocks[-1]["slack_file"]["id"]
        kept = tmp_path / "slack" / "outputs" / "daily_revenue_digest" / f"{END}.png"
        assert sandbox.slack.files[chart_id].bytes == kept.read_bytes()
        assert Image.open(io.BytesIO(kept.read_bytes())).size == (1000, 600)

        # Re-materializing the day updates its message and replaces its chart; it never posts again.
        _, again = run_main_job(sandbox, monkeypatch, instance, END, END, env=data, selection=[DIGEST_KEY])
        assert again.success
        [update] = sandbox.slack.updates
        assert update.ts == message.ts and _digests(sandbox)[f"{END}"].edits == 1
        assert sandbox.slack.files[chart_id].deleted
        new_chart = _digests(sandbox)[f"{END}"].blocks[-1]["slack_file"]["id"]
        assert new_chart != chart_id and not sandbox.slack.files[new_chart].deleted
        [materialization] = again.asset_materializations_for_node("slack__outputs__daily_revenue_digest")
        assert materialization.metadata["change"].value == "updated"
        assert materialization.metadata["ts"].value == message.ts
        assert materialization.metadata["permalink"].value.endswith(message.ts.replace(".", ""))

    # With no record of it (a new instance), the day's message is found by its metadata in the channel.
    with dg.DagsterInstance.ephemeral() as fresh:
        _, found = run_main_job(sandbox, monkeypatch, fresh, END, END, env=data, selection=[DIGEST_KEY])
    assert found.success and len(sandbox.slack.updates) == 2
    assert sandbox.slack.files[new_chart].deleted  # the chart the found message showed is replaced too
    assert len([post for post in sandbox.slack.posts if post.metadata]) == 3


def test_the_digest_cannot_be_loaded_as_an_input(sandbox):
    from revenue_pipelines.lib.slack import SlackDigestIOManager

    manager = SlackDigestIOManager(slack=_slack(sandbox), chart_dir="unused")
    context = dg.build_input_context(asset_key=DIGEST_KEY)
    with pytest.raises(dg.Failure, match="is a Slack message, not data"):
        manager.load_input(context)


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api/"


def test_configuration_mistakes_fail_at_once_naming_the_variable(sandbox):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}]
    cases = {
        "SLACK_BOT_TOKEN": _slack(sandbox, bot_token="xoxb-0-0-notatoken"),
        "SLACK_CHANNEL": _slack(sandbox, channel="C0000000000"),
        "SLACK_API_URL": _slack(sandbox, api_url=_closed_port_url()),
    }
    for variable, resource in cases.items():
        with pytest.raises(dg.Failure) as failure:
            resource.post("hello", blocks)
        assert f"Check {variable}" in failure.value.description and not failure.value.allow_retries
        assert sandbox.token not in failure.value.description
    assert "the connection was refused" in str(failure.value.description)

    # Not in a public channel: the bot joins it. A private one: it must be invited.
    general = sandbox.slack.channel_id("general")
    _slack(sandbox, channel=general).post("hello", blocks)
    assert sandbox.slack.is_member(general) and [m.text for m in sandbox.slack.messages(general)] == ["hello"]
    private = sandbox.slack.channel_id("private-revops")
    with pytest.raises(dg.Failure, match="a private channel must have the bot invited"):
        _slack(sandbox, channel=private).post("hello", blocks)


FAULTS = {
    "429 with Retry-After": {"kind": "rate_limit", "retry_after": 1, "times": 2},
    "503 burst": {"kind": "status", "status": 503, "times": 3},
    "dropped connection": {"kind": "drop", "times": 2},
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_rate_limits_and_faults_are_absorbed_and_the_message_posted_once(sandbox, fault):
    handle = sandbox.faults.add(path_contains="chat.postMessage", **fault)
    ts = _slack(sandbox).post("hello", [{"type": "divider"}])
    assert handle.fired == fault["times"]
    assert [post.ts for post in sandbox.slack.posts] == [ts]


def test_a_failed_run_alerts_once_with_its_step_error_and_failed_blocking_check(sandbox, tmp_path):
    window = (datetime(2026, 11, 12, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))
    sandbox.hubspot.malform("deals", "negative_amount", 3, within=window)
    sensor = run_failure_alert("https://dagster.example.com")
    resources = {"slack": _slack(sandbox)}
    hubspot = {"hubspot": hubspot_resource(sandbox)}
    with dg.DagsterInstance.ephemeral() as instance:
        cursor = _tick(sensor, instance, None, resources)  # the sensor starts: what ran before is not its business
        assert materialize_range([hubspot_deals], hubspot, tmp_path, END, END, instance=instance).success
        failed = materialize_range([hubspot_deals], hubspot, tmp_path, END - timedelta(days=9), END, instance=instance)
        assert not failed.success
        for _ in range(2):  # the daemon's ticks: the second sees nothing new
            cursor = _tick(sensor, instance, cursor, resources)
        [alert] = list(sandbox.slack.posts)
        # A run that fails on an error, not a check, alerts once too, with the error's first lines.
        unreachable = {"hubspot": hubspot_resource(sandbox, host=_closed_port_url().removesuffix("/api/"))}
        broken = materialize_range([hubspot_deals], unreachable, tmp_path, END, END, instance=instance)
        assert not broken.success
        for _ in range(2):
            cursor = _tick(sensor, instance, cursor, resources)
    [_, error_alert] = list(sandbox.slack.posts)
    assert error_alert.metadata["event_payload"] == {"run_id": broken.run_id}
    error_text = error_alert.blocks[1]["text"]["text"]
    assert error_text.startswith("*hubspot_deals*") and "HubSpot is unreachable at " in error_text
    assert "Check HUBSPOT_HOST." in error_text and "Blocking checks failed" not in str(error_alert.blocks)
    assert alert.metadata == {"event_type": "revenue_run_failure", "event_payload": {"run_id": failed.run_id}}
    text = " ".join(block.get("text", {}).get("text", "") for block in alert.blocks)
    assert "2026-11-11..2026-11-20" in alert.blocks[0]["text"]["text"]
    assert "hubspot_deals" in text and "blocking asset check failed" in text
    assert "hubspot/raw/deals* `rows_match_schema`: hubspot/raw/deals: 3 of " in text
    assert "amount failed greater_than_or_equal_to(0) in 3 rows" in text
    assert f"https://dagster.example.com/runs/{failed.run_id}" in alert.blocks[-1]["elements"][0]["text"]


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None, resources: dict) -> str | None:
    """One evaluation of `sensor`, as the daemon makes it; the cursor it leaves."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    sensor.evaluate_tick(context)
    return context.cursor


def test_a_message_is_found_by_its_metadata_pages_back_in_the_channels_history(sandbox):
    slack = _slack(sandbox, history_page_size=2)
    blocks = [{"type": "divider"}]
    target = slack.post("the one", blocks, {"event_type": DIGEST_EVENT, "event_payload": {"day": "2026-11-20"}})
    for n in range(7):  # newer messages push it to the fourth page
        slack.post(f"later {n}", blocks, {"event_type": DIGEST_EVENT, "event_payload": {"day": f"x{n}"}})
    assert slack.find_message(DIGEST_EVENT, "day", "2026-11-20")["ts"] == target
    assert slack.find_message(DIGEST_EVENT, "day", "2026-11-21") is None
    # Beyond HISTORY_PAGES pages it is not looked for.
    assert _slack(sandbox, history_page_size=1).find_message(DIGEST_EVENT, "day", "2026-11-20") is None
