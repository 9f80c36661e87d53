"""Which failures are the infrastructure's (the task is run again, nothing is recorded against
the genome) and which are the genome's own (recorded once, never run again)."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import torch
from botocore.exceptions import ClientError, EndpointConnectionError

from evoarena.store import StoreUnavailable
from evoarena.worker.worker import transient


def s3_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("exc", [
    StoreUnavailable("MongoDB store did not answer"),
    sqlite3.OperationalError("database is locked"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    EndpointConnectionError(endpoint_url="http://minio:9000"),
    s3_error(503, "ServiceUnavailable"),
    s3_error(400, "SlowDown"),
    torch.cuda.OutOfMemoryError("CUDA out of memory"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=lambda exc: type(exc).__name__)
def test_failures_of_the_infrastructure_are_transient(exc):
    assert transient(exc) is True


@pytest.mark.parametrize("exc", [
    ValueError("delta kind 'gaussain' is unknown"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x10 and 12x4)"),
    s3_error(403, "AccessDenied"),
    FileNotFoundError(errno.ENOENT, "No such file or directory"),
    ZeroDivisionError("float division by zero"),
], ids=lambda exc: type(exc).__name__)
def test_failures_of_the_genome_or_of_the_setup_are_not_transient(exc):
    assert transient(exc) is False
