"""A server configured with Redis or a bucket it cannot reach does not start, and says which
setting to look at (with no password in the sentence)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kakumei.errors import ConfigError
from kakumei.server.services import Services
from tests.support import listening_socket


def closed_port() -> int:
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_unreachable_redis_stops_the_server(tiny_settings, tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    settings = tiny_settings.model_copy(update={"home": tmp_path, "redis_url": url})
    with pytest.raises(ConfigError) as refused:
        Services.open(settings, None)
    assert "redis_url" in str(refused.value) and "hunter2" not in str(refused.value)


def test_an_unreachable_bucket_stops_the_server(tiny_settings, tmp_path: Path, s3_place) -> None:
    settings = tiny_settings.model_copy(update={"home": tmp_path, **s3_place.settings(), "s3_bucket": "no-such-bucket"})
    with pytest.raises(ConfigError) as refused:
        Services.open(settings, None)
    assert "s3_bucket" in str(refused.value) and "testing" not in str(refused.value)
    with pytest.raises(ConfigError, match="s3_bucket"):
        Services.open(tiny_settings.model_copy(update={"home": tmp_path, "image_store": "s3"}), None)
