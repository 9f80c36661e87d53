"""The fixtures more than one test module uses; the plain helpers they share are in helpers.py."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# helpers.py asserts as the test modules it came from did: with pytest's explanations on failure.
pytest.register_assert_rewrite("helpers")

from helpers import MANAGEMENT_API, Fleet, broker_up, management_api, raw_s3, tool  # noqa: E402

# The batched passes' per-machine choices (batched.calibration_file) go to a file of this test session,
# inherited by the workers and CLI processes the tests start, not to the user's ~/.cache.
os.environ["EVOARENA_CALIBRATION"] = str(Path(tempfile.mkdtemp(prefix="evoarena-tests-")) / "batched-paths.json")


@pytest.fixture
def fleet(tmp_path):
    """Celery workers on the real RabbitMQ (127.0.0.1:5672), started by each test, removed after."""
    if not broker_up():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672: start it with `rabbitmq-server -detached` "
                    "(.ci/run does)", pytrace=False)
    f = Fleet(tmp_path)
    yield f
    f.close()


@pytest.fixture
def management():
    """The RabbitMQ management API answers on 127.0.0.1:15672 (the plugin is enabled)."""
    try:
        management_api("overview")
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"the RabbitMQ management API does not answer on {MANAGEMENT_API} ({exc}): "
                    "`rabbitmq-plugins enable rabbitmq_management` (.ci/run does)", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


# --- S3: moto's server, spoken to over real HTTP on 127.0.0.1 ---------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """The URL of an S3 server (moto) listening on a free port of 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    """The environment a pod would have: credentials for the AWS chain, and the endpoint."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("EVOARENA_S3_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    """A fresh, empty bucket."""
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    raw_s3().create_bucket(Bucket=name)
    return name
