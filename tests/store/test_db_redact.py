"""Database URLs in messages and logs never show a password, wherever the URL carries it."""

from __future__ import annotations

import pytest

from kakumei.store.db import redact, redact_text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://kim:s3cret@db:5432/k", "postgresql://kim:***@db:5432/k"),
        ("postgresql://kim@db/k?password=s3cret", "postgresql://kim@db/k?password=***"),
        ("postgresql://db/k?sslmode=require&PASSWORD=s3cret&x=1", "postgresql://db/k?sslmode=require&PASSWORD=***&x=1"),
        ("postgresql://kim:p@ss@db/k?sslpassword=s3cret", "postgresql://kim:***@db/k?sslpassword=***"),
        ("host=db user=kim password=s3cret", "host=db user=kim password=***"),
        ("sqlite:////data/kakumei.db", "sqlite:////data/kakumei.db"),
        ("postgresql://kim@db/k", "postgresql://kim@db/k"),
    ],
)
def test_redact_hides_passwords_in_userinfo_and_parameters(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "s3cret" not in redact(url)


def test_redact_text_hides_the_password_a_driver_repeats() -> None:
    url = "postgresql://kim:s3cret@db/k?password=other"
    text = f'connection to {url} failed: password "s3cret" for kim; other=other'
    cleaned = redact_text(text, url)
    assert "s3cret" not in cleaned and "other" not in cleaned.replace("other=***", "")
    assert "postgresql://kim:***@db/k?password=***" in cleaned
