"""Our Standard Webhooks signing, checked against the reference implementation (``standardwebhooks``)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from iothub.hub.signing import SecretError, new_secret, sign, signature_headers


def test_a_signature_verifies_with_the_reference_implementation() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    body = b'{"type":"alert.firing","data":{"rule":"hot"}}'
    now = int(time.time())
    headers = signature_headers("msg_1", now, body, [secret])
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(body, headers) == {"type": "alert.firing", "data": {"rule": "hot"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_the_reference_signature_is_ours() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signed = Webhook(secret).sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, UTC), '{"test": 2432232314}'
    )
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == signed


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    headers = signature_headers("msg_2", int(time.time()), body, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


@pytest.mark.parametrize("bad", ["secret", "whsec_", "whsec_not base64!"])
def test_a_malformed_secret_is_refused(bad: str) -> None:
    with pytest.raises(SecretError):
        sign(bad, "msg", 0, b"")


def test_check_accepts_what_the_reference_signs_and_says_why_it_refuses() -> None:
    from iothub.hub.signing import check

    secret, other = new_secret(), new_secret()
    body = b'{"type":"device.online"}'
    now = int(time.time())
    signed = Webhook(secret).sign("msg_9", datetime.fromtimestamp(now, UTC), body.decode())
    headers = {"webhook-id": "msg_9", "webhook-timestamp": str(now), "webhook-signature": signed}
    assert check(secret, headers, body, now) is None
    rotating = {**headers, "webhook-signature": f"{sign(other, 'msg_9', now, body)} {signed}"}
    assert check(secret, rotating, body, now) is None  # any of the signatures will do
    assert check(other, headers, body, now) == "signature does not match the secret"
    assert check(secret, headers, body + b" ", now) == "signature does not match the secret"
    assert check(secret, headers, body, now + 301) == "webhook-timestamp is 301 s old (over 300 s off)"
    assert check(secret, headers, body, now - 400) == "webhook-timestamp is 400 s ahead (over 300 s off)"
    assert check(secret, {**headers, "webhook-timestamp": "soon"}, body, now) == (
        "webhook-timestamp 'soon' is not epoch seconds"
    )
    assert check(secret, {k: v for k, v in headers.items() if k != "webhook-id"}, body, now) == "no webhook-id header"
    assert check(secret, {**headers, "webhook-signature": ""}, body, now) == "no webhook-signature header"
