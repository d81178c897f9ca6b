"""The MQTT 3.1.1 server, a layer under the hub that imports nothing of it.

Modules, from the wire up:

* ``codec``: packets as pure functions (bytes in, packets out, and back);
* ``topics``: topic filters: validation, matching, filter-within-filter;
* ``routing``: the subscription trie; ``sessions``: a client's subscriptions and messages on their way;
* ``transport``: the byte pipe a connection runs over (TCP/TLS, WebSocket);
* ``connection``: one client's asyncio shell; ``server``: CONNECT to close, routing, Wills, durable ack;
* ``persistence``: sessions and retained messages as snapshots in SQLite;
* ``policy``: what the application plugs in (authentication, ACL, hooks, counters, options);
* ``amqtt_listeners``: the one module that touches amqtt, whose listeners accept connections.

Errors::

    ProtocolViolation         (codec) a client broke the protocol: its connection is closed
    └── UnacceptableProtocol  a CONNECT of another MQTT version: CONNACK 0x01, then closed
    StateError                (persistence) the state file cannot be opened, read or written

The first two never leave the server: a client's mistake costs that client its connection and
nothing else. ``StateError`` is raised to the application, which saves and loads the state.
"""
