"""Test helpers that stand in for external systems (fake upstream servers)."""
