"""Saved conversations in SQLite, with ordered schema migrations."""
