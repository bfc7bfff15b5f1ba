"""Where connectors keep the tokens an API issued them, so the next run and parallel steps use them.

OAuth servers that rotate refresh tokens invalidate the old one on every refresh: a token that is
not saved the moment it is issued is lost, and so is the connection. Several steps may refresh at
once, so a store is read and written under a lock; the default store is a directory of owner-only
files, and another store (a secrets manager, say) plugs in by subclassing `TokenStore`.
"""

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

Tokens = dict[str, str]


class TokenStore(dg.ConfigurableResource):
    """Tokens by key. Callers hold `locked(key)` around a load, a refresh and the save that follows."""

    def locked(self, key: str) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def load(self, key: str) -> Tokens | None:
        raise NotImplementedError

    def save(self, key: str, tokens: Tokens) -> None:
        raise NotImplementedError


class FileTokenStore(TokenStore):
    """One JSON file per key in `directory`, readable by the owner only; an flock serialises refreshes."""

    directory: str = Field(description="Created with mode 0700 if missing; keep it out of version control.")

    def _path(self, key: str, suffix: str) -> Path:
        if not key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"token store keys are letters, digits, '-' and '_'; got {key!r}")
        return Path(self.directory).expanduser() / f"{key}{suffix}"

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        lock_path = self._path(key, ".lock")
        lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self, key: str) -> Tokens | None:
        try:
            return json.loads(self._path(key, ".json").read_text())
        except FileNotFoundError:
            return None

    def save(self, key: str, tokens: Tokens) -> None:
        """Written to a private temporary file, then renamed over the old one: never half-written or shared."""
        path = self._path(key, ".json")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.")  # created 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump(tokens, file)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
