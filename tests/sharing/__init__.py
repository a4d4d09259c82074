"""Sharing: grants, their enforcement, revocation and presence."""
