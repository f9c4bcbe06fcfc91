"""A Twisted client for the gateway, for services and scripts outside the gateway process.

::

    from gateway.client import Client

    client = Client("http://127.0.0.1:8080/", token=lambda: fetch_token())
    sub = client.subscribe("room:1", lambda event: print(event))
    ack = yield client.publish("room:1", {"text": "hi"})   # {"channel", "seq", "epoch"}
    sub.unsubscribe()
    yield client.close()

It speaks WebSocket (Autobahn) and falls back to Server-Sent Events when the upgrade is
refused or nothing arrives within ``connect_timeout``; it resumes every subscription from
its position after any reconnect (each publication delivered once, in order, or a
``reset``) and retries publishes with an idempotency key until they are acknowledged.
The protocol state it keeps is sans-I/O, in :mod:`gateway.core.client`.
"""

from gateway.client._client import Client, ClientError, Subscription

__all__ = ["Client", "ClientError", "Subscription"]
