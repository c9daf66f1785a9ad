"""Durable state in one SQLite database under ``state_dir``."""

from orrad.state.db import Database
from orrad.state.inbox import Inbox, InboxEntry
from orrad.state.kv import KeyValueStore
from orrad.state.sessions import SqliteSessionStore

__all__ = ["Database", "Inbox", "InboxEntry", "KeyValueStore", "SqliteSessionStore"]
