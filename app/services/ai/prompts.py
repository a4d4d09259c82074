"""Chat prompts (system + user) for explain and rewrite, built from a masked ``CodeContext``."""

from __future__ import annotations

import re

from app.services.ai.context import CodeContext, Snippet
from app.services.ai.llm import Message
from app.services.ai.redact import PLACEHOLDER

_MASK_NOTE = (
    f"Values shown as {PLACEHOLDER}<n> were hidden by the hub on purpose: never guess them, "
    "and keep each placeholder exactly as written."
)

EXPLAIN_SYSTEM = (
    "You are a senior software engineer helping a colleague inside code-hub, a self-hosted development "
    "environment. Explain the selected code accurately and concisely in Markdown: what it does, how, and "
    "anything surprising (bugs, edge cases, performance). Refer to line numbers when useful. Use only the code "
    "shown; when the answer depends on code you cannot see, say so. " + _MASK_NOTE
)

REWRITE_SYSTEM = (
    "You are a code rewriting tool inside code-hub. You receive a file excerpt, the selected lines and an "
    "instruction. Answer with the complete replacement for the selected lines only (not the whole file, not "
    "the surrounding code) in ONE fenced code block, and nothing else: no explanation before or after. "
    "Keep the file's indentation, style and conventions; change only what the instruction asks. " + _MASK_NOTE
)


def fence(text: str, language: str = "") -> str:
    """``text`` in a Markdown code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    marks = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{marks}{language}\n{body}{marks}"


def _describe(snippet: Snippet, label: str) -> str:
    cut = " (truncated)" if snippet.truncated else ""
    lines = f"lines {snippet.start_line}-{snippet.end_line}" if snippet.end_line else "empty"
    return f"{label} `{snippet.path}` ({lines}){cut}:\n{fence(snippet.text, snippet.language)}"


def _context_sections(ctx: CodeContext) -> list[str]:
    sections = []
    if ctx.before is not None:
        sections.append(_describe(ctx.before, "Code just before the selection in"))
    if ctx.after is not None:
        sections.append(_describe(ctx.after, "Code just after the selection in"))
    for snippet in ctx.related:
        reason = "imported by the file" if snippet.reason == "import" else "in the same directory"
        sections.append(_describe(snippet, f"Related file ({reason})"))
    return sections


def _target(ctx: CodeContext) -> str:
    language = f", {ctx.language}" if ctx.language else ""
    if ctx.whole_file:
        return f"the whole file `{ctx.file.path}` ({ctx.line_count} lines{language})"
    return f"lines {ctx.start_line}-{ctx.end_line} of `{ctx.file.path}` ({ctx.line_count} lines{language})"


def explain_messages(ctx: CodeContext, question: str | None) -> list[Message]:
    """Messages asking the model to explain the selection (optionally answering ``question``)."""
    ask = ctx.masker.mask(question.strip()) if question and question.strip() else "Explain this code."
    parts = [f"Selected: {_target(ctx)}.", _describe(ctx.selection, "Selected code from"), *_context_sections(ctx)]
    parts.append(f"Question: {ask}")
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def rewrite_messages(ctx: CodeContext, instruction: str) -> list[Message]:
    """Messages asking the model for replacement text of the selection, following ``instruction``."""
    parts = [f"Instruction: {ctx.masker.mask(instruction.strip())}", f"Rewrite {_target(ctx)}."]
    parts.append(_describe(ctx.selection, "Selected lines to replace, from"))
    context = _context_sections(ctx)
    if context:
        parts.append("Context only (do not repeat it in your answer):")
        parts += context
    parts.append("Reply with the replacement for the selected lines in one fenced code block.")
    return [{"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]
