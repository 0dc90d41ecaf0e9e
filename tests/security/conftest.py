"""tests/security: one test module per hardening item of issue #14. The REST tests reuse the session
API server of tests/api (tiny SD1 models, eight tiny LoRAs, a real worker)."""
from tests.api.conftest import api_env, client  # noqa: F401  (fixtures shared with tests/api)
