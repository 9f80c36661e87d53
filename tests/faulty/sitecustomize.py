"""Loaded by the worker processes of tests that put this directory on PYTHONPATH: while the file
named by EVOARENA_TEST_WRITE_OUTAGE exists, every result write of this worker fails as a disk that
stopped answering does (sqlite3.OperationalError: disk I/O error). Reads go on. Nothing else changes."""

import os
import sqlite3

from evoarena.store import sqlite as sqlite_store

_record_result = sqlite_store.SQLiteStore.record_result


def _record_result_unless_outage(self, doc):
    flag = os.environ.get("EVOARENA_TEST_WRITE_OUTAGE")
    if flag and os.path.exists(flag):
        raise sqlite3.OperationalError("disk I/O error (an outage the test injected)")
    return _record_result(self, doc)


sqlite_store.SQLiteStore.record_result = _record_result_unless_outage
