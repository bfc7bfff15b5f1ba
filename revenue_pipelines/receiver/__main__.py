"""Serve the webhook receiver, or administer its API keys and read its audit trail.

python -m revenue_pipelines.receiver
python -m revenue_pipelines.receiver keys {create,list,rotate,revoke} ...   (see `keys --help`)
python -m revenue_pipelines.receiver audit [--since 24h] [--limit N] [--json]

Serving, it listens on RECEIVER_HOST:RECEIVER_PORT (default 127.0.0.1:8780; port 0 picks a free one,
printed at start). Exits with status 2, naming every variable to set, when a secret is missing, or
when the receiver's database cannot be opened.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import sys

import sqlalchemy as sa
import uvicorn

from revenue_pipelines.receiver import cli
from revenue_pipelines.receiver.app import create_app
from revenue_pipelines.receiver.audit import AuditLog
from revenue_pipelines.receiver.database import connect
from revenue_pipelines.receiver.keys import KeyStore
from revenue_pipelines.receiver.queue import SqlEventQueue
from revenue_pipelines.receiver.settings import SettingsError, read_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in ("keys", "audit"):
        return cli.main(arguments)
    if arguments:
        print(__doc__, file=sys.stderr)
        return 0 if arguments[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        settings = read_settings()
    except SettingsError as error:
        print(f"receiver: {error}", file=sys.stderr, flush=True)
        return 2
    listener = _listen(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    if not settings.public_url_given:  # the address bound, also when RECEIVER_PORT=0 picked it
        settings = dataclasses.replace(settings, public_url=f"http://{_netloc(host, port)}")
    where = settings.database_url.render_as_string(hide_password=True)
    try:
        engine = connect(settings.database_url)
    except sa.exc.OperationalError as error:  # the server's message names no password
        message = f"receiver: cannot open the queue at {where} (DAGSTER_PG_* or RECEIVER_QUEUE_PATH): {error.orig}"
        print(message, file=sys.stderr, flush=True)
        return 2
    queue = SqlEventQueue(engine)  # disposes of the engine when closed
    # Uvicorn stops gracefully on SIGTERM, then raises it again: exit through `finally`, not the default handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        config = uvicorn.Config(
            create_app(settings, queue, KeyStore(engine), AuditLog(engine)),
            log_config=None,  # the logging set up above; uvicorn's access log would print query strings
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        logging.getLogger("revenue_pipelines.receiver").info(
            "listening on http://%s; senders use %s; queue %s",
            _netloc(host, port),
            settings.public_url,
            where,
        )
        server.run(sockets=[listener])
    finally:
        queue.close()
        logging.getLogger("revenue_pipelines.receiver").info("stopped; queue closed")
    return 0


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


if __name__ == "__main__":
    sys.exit(main())
