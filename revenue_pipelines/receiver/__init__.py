"""The webhook receiver and launch API: a small ASGI service, run outside Dagster, that verifies
deliveries from HubSpot, Salesforce and any Standard Webhooks sender and commits each event to a
durable queue before it answers 2xx (`crm_change_sensor` drains it), and starts runs and backfills
for callers with an API key.

It is a package of its own: it talks to Dagster only through the instance's database or GraphQL and
never imports `revenue_pipelines.defs`, so it starts in a fraction of a second and cannot break
definitions.

- `settings.py`: the only reader of the process environment (`read_settings()`).
- `database.py`: where the receiver's database is (SQLite file or PostgreSQL) and `connect(url)`.
- `queue.py`: `EventQueue` (the interface) and `SqlEventQueue`, over either database, with group commit.
- `keys.py`, `audit.py`: API keys (hashed, scoped, expiring, rate-limited) and the audit trail.
- `verifiers.py`: one function per kind of sender, turning a request into events or refusing it.
- `app.py`: the Starlette app (`create_app(settings, queue, keys, audit)`).
- `launches.py`: the launch API's routes (`launch_routes(launcher, keys, audit)`) and
  `DagsterLauncher`, which starts runs and backfills through the webserver's GraphQL.
- `openapi.py`: the launch API's OpenAPI description, built from its models (docs/openapi.json).
- `cli.py`: the `keys` and `audit` commands.
- `__main__.py`: `python -m revenue_pipelines.receiver [keys ...|audit ...]`.
"""
