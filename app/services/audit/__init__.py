"""The audit log: hash-chained entries of who did what, with hashes and sizes, never content."""

__all__ = ["log"]
