"""Helpers for tests that read Prometheus text and PromQL."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}
_IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[])")
_PREFIXED = re.compile(r"(?<![\w$])((?:codehub|process|python)_[a-zA-Z0-9_]+)")
# Series Prometheus makes itself for every target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def exposed_names(text: str) -> set[str]:
    """Every series name a PromQL query may use against this exposition (families and their suffixes)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def sample_value(text: str, metric: str, **labels: str) -> float | None:
    """The value of the sample ``metric`` whose labels include ``labels`` (None when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def metric_names_in(expr: str) -> set[str]:
    """Series names a PromQL expression reads (selectors before ``{``/``[``, and codehub_/process_ names)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(_IDENT.findall(without_strings)) | set(_PREFIXED.findall(without_strings))
    return {n for n in names if n not in {"by", "without", "on", "ignoring", "group_left", "group_right"}}


def balanced(expr: str) -> bool:
    """Parentheses, braces and brackets match (a cheap syntax check; promtool is not available here)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack
