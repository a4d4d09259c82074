"""The relay: browser HTTP and WebSocket traffic to a workspace's IDE, and the web terminal.

Owns: ``front`` (``WorkspaceFront``, the ASGI front that takes ``/w/…`` and ``/ws/workspaces/…`` before
Litestar, and ``Relay``), ``deps`` (what the composition root hands the relay), ``access`` (routes to IDEs
and header rewriting), ``http`` and ``ws`` (the two upstream legs), ``wsframes`` (the WebSocket client
codec), ``splice`` (spliced WebSockets), ``pages`` (the relay's own small HTML pages), ``stats``
(counters and activity), ``sessions`` (open terminals and shared IDE WebSockets: closed when access is
lost, and who is connected), ``terminal`` (the shell over a WebSocket), ``hosts`` and ``subdomain`` (subdomain
mode: a workspace's own host, and the ticket entry onto it), ``presence`` (who is connected, across hub
processes), ``shaping`` (the headers sent each way) and ``follow`` (closing connections as lifecycle events
and revocations arrive).
"""

__all__ = ["deps", "follow", "front", "splice"]
