"""The test suite. Imported before any test module (and before the definitions are built), so the
settings below hold for the whole session and every process it starts."""

import os
from pathlib import Path

# No routes in the tests' own code location: a test of the main job delivers nothing it did not ask for.
# test_routes.py builds route assets from files of its own; the demo's CLI test uses the project's file.
os.environ.setdefault("REVENUE_PIPELINES_ROUTES", str(Path(__file__).parent / "routes" / "none.yaml"))
