"""Object storage behind a small protocol, with one registry; S3 (AWS, MinIO, SeaweedFS, ...) via boto3."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from backdrop.errors import BackdropError
from backdrop.settings import Settings

# A result's put: tried this many times (botocore's standard retry mode tried twice), and the presigned
# URL it goes through is valid this long (it is used at once).
PUT_ATTEMPTS = 2
PRESIGNED_PUT_S = 300


class StorageUnavailable(BackdropError):
    """The object store cannot be reached or refuses us (``storage_unavailable``); worth a retry."""

    code = "storage_unavailable"


class ObjectNotFound(BackdropError):
    code = "object_not_found"


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None:
        """Store a file read in parts from ``source``: memory stays flat however large it is."""
        ...

    def get(self, key: str) -> bytes: ...

    def get_file(self, key: str, destination: Path) -> None:
        """Write the object to ``destination``, in parts."""
        ...

    def delete(self, *keys: str) -> None: ...

    def presign_get(self, key: str, expires_s: int, download_name: str | None = None) -> str:
        """A URL anyone holding it can GET for ``expires_s`` seconds (objects are private otherwise); with
        ``download_name``, browsers save the object under that name instead of showing it."""
        ...

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the store answers and the bucket exists."""
        ...

    def delete_older_than(self, prefix: str, cutoff: float) -> int:
        """Delete objects under ``prefix`` last modified before ``cutoff`` (epoch seconds); returns how many."""
        ...

    def list_keys(self, prefix: str) -> list[str]: ...


class S3Storage:
    """Private objects in one bucket; clients only ever see presigned URLs."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        from botocore.handlers import add_expect_header

        self.bucket = settings.s3_bucket
        config = Config(
            signature_version="s3v4",
            connect_timeout=2,
            read_timeout=20,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
            # botocore computes and checks a CRC32 of every body by default: CPU on both sides of every
            # object for a check TCP and the store already make (S3 still gets Content-MD5 where an
            # operation requires one, e.g. DeleteObjects).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        credentials = {
            "aws_access_key_id": settings.s3_access_key,
            "aws_secret_access_key": settings.s3_secret_key,
            "region_name": settings.s3_region,
        }
        session = boto3.session.Session()
        self._client = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config, **credentials)
        # botocore sends every body after an "Expect: 100-continue" handshake: one more round trip per put
        # to learn early of a refusal that the bucket's own service never gives (measured on a 375 KB result:
        # 0.3 ms of the worker's CPU, 0.5 ms of S3's and 0.6 ms of waiting per put).
        self._client.meta.events.unregister("before-call.s3", add_expect_header)
        # The client's HTTP session (botocore's, not a public attribute): puts go through it directly. Where
        # a botocore version lacks it, puts go through put_object as before.
        self._http = getattr(getattr(self._client, "_endpoint", None), "http_session", None)
        # Presigned URLs must name the address clients use, which may differ from the internal one.
        public = settings.s3_public_url or settings.s3_endpoint_url
        self._signer = session.client("s3", endpoint_url=public, config=config, **credentials)
        self._create_bucket = settings.s3_create_bucket
        self._bucket_checked = False
        # Large files (videos) go in 8 MiB parts, two at a time, at most three parts in memory (boto3 would
        # hold ten): what an upload costs in memory stays flat whatever the file's size.
        self._transfer = TransferConfig(multipart_chunksize=8 * 1024 * 1024, max_concurrency=2)
        self._transfer.max_in_memory_upload_chunks = 3
        self._transfer.max_in_memory_download_chunks = 3

    def _call(self, operation: Callable[[], object]) -> object:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"no object {error.get('Key', '')}".strip()) from None
            raise StorageUnavailable(f"object store refused the request: {code} {error.get('Message', '')}") from None
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from None

    def ensure_bucket(self) -> None:
        """Check the bucket exists; create it when allowed (development stacks)."""
        try:
            self._call(lambda: self._client.head_bucket(Bucket=self.bucket))
        except ObjectNotFound:
            if not self._create_bucket:
                raise StorageUnavailable(f"bucket {self.bucket!r} does not exist") from None
            self._call(lambda: self._client.create_bucket(Bucket=self.bucket))
        self._bucket_checked = True

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if not self._bucket_checked:
            self.ensure_bucket()
        if self._http is None:  # botocore retries by itself
            body = {"Bucket": self.bucket, "Key": key, "Body": data, "ContentType": content_type}
            self._call(lambda: self._client.put_object(**body))
            return
        for attempt in range(PUT_ATTEMPTS):
            try:
                self._call(lambda: self._put_presigned(key, data, content_type))
                return
            except StorageUnavailable:
                if attempt == PUT_ATTEMPTS - 1:
                    raise

    def _put_presigned(self, key: str, data: bytes, content_type: str) -> None:
        """PutObject as a presigned PUT sent on the client's own connections (its TLS, proxy and timeout
        settings): the same request, signed the same way (SigV4; the body unsigned, as in any presigned
        URL), without botocore's per-call work (parameter checks, endpoint rules, event hooks, the answer's
        parsing), which cost a worker 0.7-1.3 ms of CPU per result (docs/speed.md)."""
        from botocore.awsrequest import AWSRequest

        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        url = self._client.generate_presigned_url("put_object", Params=params, ExpiresIn=PRESIGNED_PUT_S)
        request = AWSRequest(method="PUT", url=url, data=data, headers={"Content-Type": content_type})
        response = self._http.send(request.prepare())
        if response.status_code >= 300:
            text = response.content.decode(errors="replace")
            code = re.search(r"<Code>([^<]*)</Code>", text)
            message = re.search(r"<Message>([^<]*)</Message>", text)
            raise StorageUnavailable(
                f"object store refused the request: {code.group(1) if code else response.status_code} "
                f"{message.group(1) if message else ''}".strip()
            )

    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None:
        if not self._bucket_checked:
            self.ensure_bucket()
        source.seek(0)
        self._call(
            lambda: self._client.upload_fileobj(
                source, self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )
        )

    def get(self, key: str) -> bytes:
        response = self._call(lambda: self._client.get_object(Bucket=self.bucket, Key=key))
        return self._call(lambda: response["Body"].read())  # type: ignore[index]

    def get_file(self, key: str, destination: Path) -> None:
        self._call(lambda: self._client.download_file(self.bucket, key, str(destination), Config=self._transfer))

    def delete(self, *keys: str) -> None:
        if keys:
            objects = [{"Key": key} for key in keys]
            self._call(lambda: self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects}))

    def presign_get(self, key: str, expires_s: int, download_name: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        return str(self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s))

    def ping(self) -> None:
        self.ensure_bucket()

    def _objects(self, prefix: str) -> list[dict]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        return [item for page in pages for item in page.get("Contents", [])]  # type: ignore[union-attr]

    def list_keys(self, prefix: str) -> list[str]:
        return [item["Key"] for item in self._objects(prefix)]

    def delete_older_than(self, prefix: str, cutoff: float) -> int:
        expired = [item["Key"] for item in self._objects(prefix) if item["LastModified"].timestamp() < cutoff]
        for start in range(0, len(expired), 1000):  # the S3 limit per DeleteObjects call
            self.delete(*expired[start : start + 1000])
        return len(expired)


STORAGES: dict[str, Callable[[Settings], Storage]] = {"s3": S3Storage}


def open_storage(settings: Settings) -> Storage:
    try:
        factory = STORAGES[settings.storage]
    except KeyError:
        raise BackdropError(
            f"unknown storage {settings.storage!r}; known: {', '.join(STORAGES)}", code="invalid_setting"
        ) from None
    return factory(settings)
