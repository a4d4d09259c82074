"""Masking of secret-looking values before text leaves the hub (e.g. as LLM context).

``SecretMasker`` replaces each secret value with a placeholder ``MASKED_SECRET_<n>`` (one per distinct
value) and remembers the original, so text that comes back (a rewrite) can have the real values put back
hub-side: secrets never leave, and a rewrite does not replace them with placeholders. Rules, best effort
and biased towards masking:

- private key blocks (``-----BEGIN … PRIVATE KEY-----``): every line inside
- well-known token formats anywhere: AWS access key ids, GitHub/GitLab/Slack/Stripe/Google/OpenAI/
  Hugging Face/npm tokens, JWTs
- credentials in URLs (``scheme://user:password@host``), ``Bearer``/``Basic`` credentials
- assignments to (or comparisons with) secret-ish names (password, secret, token, api_key, private_key,
  credentials, …) of a string literal, in any language or config format (``password = "…"``,
  ``"token": "…"``, ``key: …``);
  unquoted values too in config-like lines (``.env`` ``KEY=VALUE``, YAML, INI, shell ``export``)
- high-entropy values assigned to weaker names (key, auth, salt, signature, …)
- then any value already masked once, wherever else it appears (``mask_known``)
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import Counter

PLACEHOLDER = "MASKED_SECRET_"
PLACEHOLDER_RE = re.compile(PLACEHOLDER + r"\d+")

# Secrets recognisable without a name: (literals, pattern matched where a literal occurs, the literal must
# start a word). The secret is the ``v`` group. Matching only at literal occurrences (``str.find``) keeps a
# scan of ordinary code to a few substring searches.
_ANYWHERE = [
    (tuple(literals), re.compile(pattern), word_start)
    for literals, pattern, word_start in (
        (
            ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"),
            r"(?P<v>(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16})\b",
            True,
        ),
        (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"(?P<v>gh[pousr]_[A-Za-z0-9]{30,})\b", True),
        (("github_pat_",), r"(?P<v>github_pat_[A-Za-z0-9_]{20,})\b", True),
        (("glpat-",), r"(?P<v>glpat-[A-Za-z0-9_\-]{20,})\b", True),
        (("xox",), r"(?P<v>xox[abposr]-[A-Za-z0-9\-]{10,})\b", True),
        (("sk_live_", "sk_test_", "rk_live_", "rk_test_"), r"(?P<v>[sr]k_(?:live|test)_[A-Za-z0-9]{16,})\b", True),
        (("AIza",), r"(?P<v>AIza[0-9A-Za-z_\-]{35})\b", True),
        (("sk-",), r"(?P<v>sk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_\-]{20,})\b", True),
        (("hf_",), r"(?P<v>hf_[A-Za-z0-9]{30,})\b", True),
        (("npm_",), r"(?P<v>npm_[A-Za-z0-9]{36})\b", True),
        (("eyJ",), r"(?P<v>eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})", True),
        (("://",), r"://[^\s:/@'\"]+:(?P<v>[^\s@/'\"]+)@", False),
        (
            ("Bearer", "bearer", "BEARER", "Basic", "basic", "BASIC"),
            r"[A-Za-z]+\s+(?P<v>(?=[A-Za-z._~\-]*[0-9+/=])[A-Za-z0-9._~+/\-]{12,}=*)",
            True,
        ),
    )
]


def _anywhere_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the secrets ``_ANYWHERE`` finds in ``text``, in order, without overlaps."""
    spans = []
    for literals, pattern, word_start in _ANYWHERE:
        for literal in literals:
            at = text.find(literal)
            while at != -1:
                before = text[at - 1] if at else " "
                if not (word_start and (before.isalnum() or before == "_")):
                    match = pattern.match(text, at)
                    if match is not None:
                        spans.append(match.span("v"))
                at = text.find(literal, at + 1)
    spans.sort()
    kept: list[tuple[int, int]] = []
    for span in spans:
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


_PRIVATE_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")

_STRONG_NAME = re.compile(
    r"passw(?:or)?d|passwd|passphrase|(?:^|[_.\-])pwd(?:$|[_.\-])|secret|token|api[_.\-]?key|apikey|"
    r"access[_.\-]?key|private[_.\-]?key|client[_.\-]?secret|credential|auth[_.\-]?key|session[_.\-]?key|"
    r"signing[_.\-]?key|encryption[_.\-]?key|master[_.\-]?key",
    re.IGNORECASE,
)
_NOT_SECRET_NAME = re.compile(
    r"(?:max|min|num|n|total|count)[_.\-]?tokens?$|tokens?[_.\-]?(?:count|type|url|uri|endpoint|limit|len|"
    r"length|usage|ids?|name|header|file|path|field|label|prompt|regex|pattern|kind|expiry|expires[_.\-]?at|"
    r"ttl)$|tokeni[sz]|(?:secret|password|passwd)[_.\-]?(?:name|ref|id|file|path|arn|field|label|prompt|"
    r"policy|length|min|max|hint|regex|pattern|url|required|env|var)$|^tokens$",
    re.IGNORECASE,
)
_WEAK_NAME = re.compile(
    r"(?:^|[_.\-])(?:key|auth|salt|seed|nonce|signature|sig|cookie|hmac|cert)(?:$|[_.\-])", re.IGNORECASE
)
_SECRETISH_IDENT = re.compile(  # an identifier holding one of the words of secret-ish names
    r"(?<![A-Za-z0-9_.\-])(?=[A-Za-z_])[A-Za-z0-9_.\-]*?"
    r"(?:pass|pwd|secret|token|key|credential|auth|salt|seed|nonce|sig|cookie|hmac|cert)[A-Za-z0-9_.\-]*",
    re.IGNORECASE,
)
_CANDIDATE_WORDS = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "salt",
    "seed",
    "nonce",
    "sig",
    "cookie",
    "hmac",
    "cert",
)


def _candidate_lines(text: str, lines: list[str]) -> list[int]:
    """Indexes of the lines of ``text`` holding a word of a secret-ish name (substring scans of the whole text)."""
    low = text.lower()
    starts = [0, *itertools.accumulate(len(line) + 1 for line in lines)]
    hits: set[int] = set()
    for word in _CANDIDATE_WORDS:
        at = low.find(word)
        while at != -1:
            hits.add(bisect.bisect_right(starts, at) - 1)
            at = low.find(word, at + len(word))
    return sorted(hits)


def _candidate(text: str) -> bool:
    """Whether ``text`` holds a word a secret-ish name needs (cheap: substring searches, no regex)."""
    return any(map(text.lower().__contains__, _CANDIDATE_WORDS))


_OPERATOR = re.compile(r"""["']?\s*(?::\s*[A-Za-z_][\w\[\]., |]*?\s*(?==))?(?::=|=>|===?|=|:(?!:))\s*""")
_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"|\'((?:[^\'\\\n]|\\.)*)\'|`([^`\n]*)`')
_BARE = re.compile(r"[^\s,;#'\"`]+")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_.\-]*\s*=")
_REFERENCE = re.compile(
    r"^(?:\$\{?[A-Za-z_][\w.]*\}?|\{\{.*\}\}|<[^<>]+>|%\(?\w+\)?s?|\*+|x+|X+|\.\.\.|None|null|nil)$"
)
_HIGH_ENTROPY_CHARS = re.compile(r"[A-Za-z0-9+/=_\-.~:]+")

CONFIG_LANGUAGES = frozenset({"dotenv", "shell", "yaml", "ini", "toml", "properties", "conf", "dockerfile"})


def in_private_key(prefix: str) -> bool:
    """True when text following ``prefix`` is inside a private key block that ``prefix`` opened."""
    begin = max((m.end() for m in _PRIVATE_BEGIN.finditer(prefix)), default=-1)
    end = max((m.end() for m in _PRIVATE_END.finditer(prefix)), default=-1)
    return begin > end


def entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def looks_random(value: str) -> bool:
    """True for long, high-entropy, token-like strings (no spaces)."""
    return len(value) >= 16 and entropy(value) >= 3.0 and bool(_HIGH_ENTROPY_CHARS.fullmatch(value))


def name_strength(name: str) -> int:
    """2 for clearly secret names (password, token…), 1 for weak ones (key, salt…), else 0."""
    if _NOT_SECRET_NAME.search(name):
        return 0
    if _STRONG_NAME.search(name):
        return 2
    return 1 if _WEAK_NAME.search(name) else 0


class SecretMasker:
    """Masks secrets in text, one placeholder per distinct value; ``restore`` puts the values back."""

    def __init__(self) -> None:
        self._placeholders: dict[str, str] = {}
        self._values: dict[str, str] = {}

    @property
    def count(self) -> int:
        """Distinct secret values masked so far."""
        return len(self._values)

    def values_in_order(self) -> tuple[str, ...]:
        """The masked values, the n-th standing behind placeholder n."""
        return tuple(self._placeholders)

    def placeholder(self, value: str) -> str:
        """The placeholder of ``value`` (a new one the first time the value is seen)."""
        if value not in self._placeholders:
            token = f"{PLACEHOLDER}{len(self._placeholders) + 1}"
            self._placeholders[value] = token
            self._values[token] = value
        return self._placeholders[value]

    def restore(self, text: str) -> str:
        """Replace the placeholders this masker made by the original values."""
        if not self._values:
            return text
        return PLACEHOLDER_RE.sub(lambda m: self._values.get(m.group(0), m.group(0)), text)

    def mask(self, text: str, language: str = "", *, in_key: bool = False) -> str:
        """Return ``text`` with secret-looking values replaced by placeholders (line structure kept).

        ``in_key``: the text starts inside a private key block (an excerpt cut from a larger file).
        """
        if in_key or "PRIVATE KEY" in text:
            text = self._mask_key_blocks(text, in_key)
        if spans := _anywhere_spans(text):
            text = self._replace_spans(text, spans)
        if _candidate(text):
            config = language in CONFIG_LANGUAGES
            lines = text.split("\n")
            for i in _candidate_lines(text, lines):
                line = lines[i]
                env_line = bool(_ENV_LINE.match(line) and " = " not in line)
                lines[i] = self._mask_assignments(line, config or env_line)
            text = "\n".join(lines)
        return self.mask_known(text)

    def _mask_key_blocks(self, text: str, in_key: bool) -> str:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if in_key:
                if _PRIVATE_END.search(line):
                    in_key = False
                elif line.strip():
                    lines[i] = self._mask_whole(line)
            elif _PRIVATE_BEGIN.search(line):
                in_key = not _PRIVATE_END.search(line)
        return "\n".join(lines)

    def _replace_spans(self, text: str, spans: list[tuple[int, int]]) -> str:
        out, pos = [], 0
        for start, end in spans:
            value = text[start:end]
            if _REFERENCE.match(value) or PLACEHOLDER_RE.fullmatch(value):
                continue
            out += [text[pos:start], self.placeholder(value)]
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def mask_known(self, text: str) -> str:
        """Mask every value already known as a secret wherever it appears (a password quoted in prose)."""
        for value in sorted(self._placeholders, key=len, reverse=True):
            if len(value) >= 6 and value in text:
                text = text.replace(value, self._placeholders[value])
        return text

    def _mask_whole(self, line: str) -> str:
        stripped = line.strip().rstrip("\r")
        start = line.index(stripped)
        return line[:start] + self.placeholder(stripped) + line[start + len(stripped) :]

    def _mask_assignments(self, line: str, config: bool) -> str:
        pos = 0
        while True:
            ident = _SECRETISH_IDENT.search(line, pos)
            if ident is None:
                return line
            pos = ident.end()
            strength = name_strength(ident.group(0))
            if not strength:
                continue
            op = _OPERATOR.match(line, pos)
            if op is None:
                continue
            value_start = op.end()
            literal = _STRING.match(line, value_start)
            if literal is not None:
                group = next(g for g in (1, 2, 3) if literal.group(g) is not None)
                span = literal.span(group)
            elif (bare := _BARE.match(line, value_start)) is not None:
                value = bare.group(0)
                if not (config or looks_random(value)):
                    pos = bare.end()
                    continue
                span = bare.span()
            else:
                continue
            value = line[span[0] : span[1]]
            if self._secret_value(value, strength):
                token = self.placeholder(value)
                line = line[: span[0]] + token + line[span[1] :]
                pos = span[0] + len(token)
            else:
                pos = span[1]

    @staticmethod
    def _secret_value(value: str, strength: int) -> bool:
        if PLACEHOLDER_RE.search(value) or _REFERENCE.match(value.strip()):
            return False
        if strength == 2:
            return len(value.strip()) >= 3
        return looks_random(value)
