"""Weights in S3 (or an S3-compatible store): the fleet's checkpoints.

Each artifact is one object, `prefix/key.safetensors`, whose body is the safetensors file and
whose user metadata `sha256` (x-amz-meta-sha256) is the checksum of that body, verified on
every read. A PUT replaces an object whole, so readers see the old tensors or the new ones.

Credentials come only from the standard AWS chain (environment, IRSA web identity, instance
profile): nothing here names a key. An S3-compatible endpoint (MinIO, a test server) comes
from EVOARENA_S3_ENDPOINT_URL, or from AWS_ENDPOINT_URL, which boto3 reads itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are read or written: opening a store needs no torch
    import torch

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from evoarena.settings import Settings
from evoarena.store.artifacts import ArtifactError, check_key, safetensors_metadata, verified

SUFFIX = ".safetensors"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of "s3://bucket/prefix"; the prefix has no leading or trailing "/"."""
    if not url.startswith("s3://"):
        raise ValueError(f"S3 artifact URL {url!r} must look like s3://bucket/prefix")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(
            f"S3 artifact URL {url!r}: bucket {bucket!r} must be 3..63 chars of "
            "a-z 0-9 . -, starting and ending with a letter or digit"
        )
    return bucket, prefix.strip("/")


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for `endpoint_url` (default: EVOARENA_S3_ENDPOINT_URL, else AWS)."""
    endpoint_url = endpoint_url or Settings.from_env().s3_endpoint_url or None
    # A custom endpoint is usually MinIO or a test server, which want path-style addresses
    # (http://host/bucket/key) rather than bucket.host.
    config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Artifacts:
    """ArtifactStore on an S3 bucket under a prefix, e.g. S3Artifacts("s3://ckpts/exp1")."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url or Settings.from_env().s3_endpoint_url or None
        self.root = f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        self._lock = threading.Lock()
        self._pid = -1
        self._client: Any = None

    def _s3(self) -> Any:
        # boto3 clients are thread-safe but not fork-safe (a forked child would share the
        # parent's pooled connections): each process makes its own, on first use.
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = s3_client(self.endpoint_url)
                self._pid = os.getpid()
            return self._client

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}{SUFFIX}" if self.prefix else f"{key}{SUFFIX}"

    def uri(self, key: str) -> str:
        check_key(key)
        return f"{self.root}{key}{SUFFIX}"

    def put(
        self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> str:
        object_key = self._object_key(key)
        from safetensors.torch import save as save_safetensors

        data = save_safetensors(tensors, metadata)  # fails here, before anything is sent
        self._s3().put_object(
            Bucket=self.bucket,
            Key=object_key,
            Body=data,
            ContentType="application/octet-stream",
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )
        return self.uri(key)

    def exists(self, key: str) -> bool:
        object_key = self._object_key(key)
        try:
            head = self._s3().head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return False
            raise
        return "sha256" in head.get("Metadata", {})

    def _key_of(self, uri: str) -> str:
        key = uri.removeprefix(self.root).removesuffix(SUFFIX)
        if not (uri.startswith(self.root) and uri.endswith(SUFFIX)) or "/" in key:
            raise ArtifactError(f"artifact URI {uri!r} is not a .safetensors file in {self.root}")
        try:
            check_key(key)
        except ValueError as e:
            raise ArtifactError(f"artifact URI {uri!r}: {e}") from None
        return key

    def _verified_bytes(self, uri: str) -> bytes:
        key = self._key_of(uri)
        try:
            found = self._s3().get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise ArtifactError(f"artifact {key!r} is missing: no object at {uri}") from None
            raise
        data = found["Body"].read()
        expected = found.get("Metadata", {}).get("sha256")
        if not expected:
            raise ArtifactError(
                f"artifact {key!r} at {uri} has no checksum (object metadata 'sha256')"
            )
        return verified(data, expected, f"artifact {key!r} at {uri}", "its object metadata")

    def get(self, uri: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load as load_safetensors

        return load_safetensors(self._verified_bytes(uri))

    def metadata(self, uri: str) -> dict[str, str]:
        """The metadata stored with the tensors at `uri` (verified like get)."""
        return safetensors_metadata(self._verified_bytes(uri))

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Artifacts({self.root.rstrip('/')!r}{endpoint})"
