"""Upstream networking shared by the relay and the LLM client's transport.

Owns: ``io`` (``Link``: a small asyncio protocol with awaitable read and send), ``pool`` (the keep-alive
``UpstreamPool`` and the httptools response parser), ``http_transport`` (``LinkTransport``, an httpx
transport on that pool).
"""

__all__ = ["http_transport", "io", "pool"]
