"""The event hub and its delivery: publish to topics, subscribe with replay, stream as SSE.

Owns: ``hub`` (the contract and the in-process backend), ``redis_hub`` (the Redis backend), ``backend``
(``open_hub``: the backend the settings select), ``fanout`` (local routing and bounded per-subscriber
buffers), ``subscription`` (the consumer side), ``sse`` (framing), ``direct_http`` (live frames written
straight to sockets).
"""

__all__ = ["backend", "direct_http", "fanout", "hub", "sse"]
