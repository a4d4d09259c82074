"""AI explain and rewrite: the service that runs a request, its code context, prompts, the LLM client.

Owns: ``service`` (``AIService``: one request as a job, events on ``ai:<id>``, audit), ``context`` and
``context_cache`` (the selection plus related code, masked), ``prompts``, ``rewrite`` (a model's answer as a
unified diff), ``llm`` and ``llm_stream`` (the OpenAI-compatible client and wire format), ``limits``
(per-user concurrency and rate), ``owners`` (who may follow an AI topic), ``redact`` (secret masking).
"""

__all__ = ["limits", "llm", "llm_stream", "owners", "service"]
