"""file:// and s3:// behind one interface.

S3 goes through boto3 with an explicit `endpoint_url`, so any S3-compatible
server works (MinIO, Ceph, moto in tests). Uploads above `MULTIPART_BYTES`
use multipart upload in `MULTIPART_BYTES` parts; downloads stream to disk in
parts too, so memory stays flat whatever the object's size. Local writes go
to a temporary name first and are renamed into place, so a reader never sees
half a file.

GDAL can read s3:// objects in place (/vsis3/); `gdal_options` gives it the
same endpoint and credentials as boto3.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

MULTIPART_BYTES = 8 * 1024 * 1024
TRANSFER_THREADS = 4


class StorageError(Exception):
    """An object could not be read or written. `missing` means it (or its bucket) does not exist;
    `unreachable` means the store did not answer."""

    def __init__(self, message: str, *, missing: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
        self.unreachable = unreachable


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    bucket: str  # "" for file://
    path: str  # absolute path for file://, object key (no leading slash) for s3://

    @property
    def uri(self) -> str:
        return f"file://{self.path}" if self.scheme == "file" else f"s3://{self.bucket}/{self.path}"


def parse(uri: str) -> Location:
    try:
        parsed = urlparse(uri)
    except ValueError:  # e.g. an unclosed IPv6 bracket: "s3://[bucket/key"
        raise StorageError(f"{uri!r} is not a valid URI") from None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StorageError(f"{uri!r} is not a file URI with an absolute path")
        return Location("file", "", parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    raise StorageError(f"{uri!r} must start with file:// or s3://")


def join(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


class Storage:
    """Reads and writes file:// and s3:// URIs."""

    def __init__(self, s3_endpoint_url: str = "") -> None:
        self.s3_endpoint_url = s3_endpoint_url
        self._client = None

    # -- S3 plumbing -------------------------------------------------------

    @property
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60)
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.s3_endpoint_url or None, config=config
            )
        return self._client

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=TRANSFER_THREADS
        )

    def _s3_error(self, error: Exception, what: str) -> StorageError:
        from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                return StorageError(f"{what}: not found", missing=True)
            return StorageError(
                f"{what}: {code or 'error'}: {error.response.get('Error', {}).get('Message', '')}".rstrip(": ")
            )
        if isinstance(error, (EndpointConnectionError, ConnectionClosedError)):
            return StorageError(
                f"{what}: the S3 endpoint {self.s3_endpoint_url or '(default)'} does not answer", unreachable=True
            )
        return StorageError(f"{what}: {type(error).__name__}: {error}")

    # -- the interface -------------------------------------------------------

    def size(self, uri: str) -> int:
        """Bytes in the object at `uri`; StorageError(missing=True) when there is none."""
        location = parse(uri)
        if location.scheme == "file":
            path = Path(location.path)
            if not path.is_file():
                raise StorageError(f"{uri}: no such file", missing=True)
            return path.stat().st_size
        try:
            return int(self.s3.head_object(Bucket=location.bucket, Key=location.path)["ContentLength"])
        except Exception as error:  # translated to StorageError
            raise self._s3_error(error, uri) from None

    def fetch(self, uri: str, scratch: Path) -> Path:
        """A local path holding the object: the file itself for file://, a streamed download for s3://."""
        location = parse(uri)
        if location.scheme == "file":
            self.size(uri)
            return Path(location.path)
        scratch.mkdir(parents=True, exist_ok=True)
        name = Path(location.path).name
        target = scratch / (name if name not in ("", "..") else "object")  # never a key's way out of scratch
        partial = target.with_name(target.name + ".part")
        try:
            self.s3.download_file(location.bucket, location.path, str(partial), Config=self._transfer_config())
        except Exception as error:
            partial.unlink(missing_ok=True)
            raise self._s3_error(error, uri) from None
        partial.replace(target)
        return target

    def put(self, source: Path, uri: str, content_type: str = "application/octet-stream") -> None:
        """Publish a local file at `uri`, atomically: readers see the whole file or nothing."""
        location = parse(uri)
        if location.scheme == "file":
            target = Path(location.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            os.close(fd)
            try:
                shutil.copyfile(source, temporary)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            return
        try:
            self.s3.upload_file(
                str(source),
                location.bucket,
                location.path,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer_config(),
            )
        except Exception as error:
            raise self._s3_error(error, uri) from None

    def delete(self, uri: str) -> None:
        location = parse(uri)
        if location.scheme == "file":
            Path(location.path).unlink(missing_ok=True)
            return
        try:
            self.s3.delete_object(Bucket=location.bucket, Key=location.path)
        except Exception as error:
            raise self._s3_error(error, uri) from None

    def check_writable(self, prefix: str) -> None:
        """Raise StorageError unless objects can be written under `prefix`
        (the bucket exists / the folder can be made)."""
        location = parse(prefix)
        if location.scheme == "file":
            path = Path(location.path)
            existing = path
            while not existing.exists():
                existing = existing.parent
            if not existing.is_dir():
                raise StorageError(f"{prefix}: {existing} is a file, not a folder")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise StorageError(f"{prefix}: {existing} is not writable")
            return
        try:
            self.s3.head_bucket(Bucket=location.bucket)
        except Exception as error:
            raise self._s3_error(error, f"s3://{location.bucket}") from None

    def exists(self, uri: str) -> bool:
        try:
            self.size(uri)
        except StorageError as error:
            if error.missing:
                return False
            raise
        return True

    # -- GDAL -----------------------------------------------------------------

    def gdal_path(self, uri: str) -> str:
        location = parse(uri)
        return location.path if location.scheme == "file" else f"/vsis3/{location.bucket}/{location.path}"

    def gdal_options(self, uri: str) -> dict:
        """rasterio.Env keyword arguments so GDAL reads `uri` from the same server,
        with the same credentials, as boto3."""
        if parse(uri).scheme != "s3":
            return {}
        from rasterio.session import AWSSession

        options: dict = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "AWS_VIRTUAL_HOSTING": "FALSE"}
        parsed = urlparse(self.s3.meta.endpoint_url)
        endpoint = None
        if parsed.netloc and not parsed.netloc.endswith("amazonaws.com"):
            endpoint = parsed.netloc
            options["AWS_HTTPS"] = "YES" if parsed.scheme == "https" else "NO"
        credentials = self.s3._request_signer._credentials  # boto3 exposes no public getter
        region = self.s3.meta.region_name or "us-east-1"
        if credentials is None:
            options["session"] = AWSSession(aws_unsigned=True, region_name=region, endpoint_url=endpoint)
        else:
            frozen = credentials.get_frozen_credentials()
            options["session"] = AWSSession(
                aws_access_key_id=frozen.access_key,
                aws_secret_access_key=frozen.secret_key,
                aws_session_token=frozen.token,
                region_name=region,
                endpoint_url=endpoint,
            )
        return options
