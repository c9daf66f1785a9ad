"""Durable state in one SQLite database under ``state_dir``."""

from orrad.state.db import Database
from orrad.state.kv import KeyValueStore
from orrad.state.ledger import Ledger, LedgerEntry
from orrad.state.sessions import SqliteSessionStore

__all__ = ["Database", "KeyValueStore", "Ledger", "LedgerEntry", "SqliteSessionStore"]
