"""Persistence adapters (SQLite by default) behind small interfaces."""
