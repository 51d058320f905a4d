"""S3Storage against moto's S3 server: the Storage contract, atomic creates, clear errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from piston.bundle import BundleMeta, Gate
from piston.errors import (
    ObjectTooLarge,
    RegistryError,
    StaleProduction,
    StorageError,
    StorageUnavailable,
)
from piston.registry import Move, Registry
from piston.storage import open_storage
from piston.storage.s3 import S3Storage
from tests.workers.conftest import MotoServer, free_port


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    moto.client().create_bucket(Bucket="contract")
    return "contract"


def test_the_storage_contract(moto: MotoServer, bucket: str) -> None:
    storage = open_storage(f"s3://{bucket}/root/", moto.url)
    assert isinstance(storage, S3Storage) and storage.uri == f"s3://{bucket}/root"
    storage.write("a/one.txt", b"1", metadata={"asset-id": "A-1"})
    storage.write("a/two.txt", b"22")
    moto.client().put_object(Bucket=bucket, Key="rootless/x", Body=b"not under root/")
    assert storage.read("a/one.txt") == b"1"
    listed = storage.list("")
    assert [o.key for o in listed] == ["a/one.txt", "a/two.txt"]
    assert [o.size for o in listed] == [1, 2] and all(len(o.etag) == 32 for o in listed)
    head = storage.head("a/one.txt")
    assert head is not None and head.metadata == {"asset-id": "A-1"} and head.size == 1
    assert storage.head("a/none.txt") is None
    child = storage.child("a")
    assert child.read("two.txt") == b"22"
    assert [o.key for o in child.list()] == ["one.txt", "two.txt"]
    assert storage.local_path("a/one.txt") is None
    storage.write("a/one.txt", b"replaced")
    assert storage.read("a/one.txt") == b"replaced"
    storage.delete("a/one.txt")
    assert storage.head("a/one.txt") is None
    with pytest.raises(StorageError, match=r"s3://contract/root/a/one.txt does not exist"):
        storage.read("a/one.txt")


def test_create_is_exclusive_even_under_a_race(moto: MotoServer, bucket: str) -> None:
    storage = open_storage(f"s3://{bucket}/race", moto.url)
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda i: storage.create("pointer.json", str(i).encode()), range(16)))
    assert wins.count(True) == 1
    assert storage.read("pointer.json") == str(wins.index(True)).encode()


def test_the_registry_pointer_on_s3(moto: MotoServer, bucket: str) -> None:
    storage = open_storage(f"s3://{bucket}/registry", moto.url)
    registry = Registry(storage)
    meta = BundleMeta(version="v1", classes=["a"], arch="seed_cnn", contract={},
                      gates=[Gate(name="accuracy", value=1.0, threshold=0.9, passed=True)])
    storage.write("bundles/v1.json", meta.model_dump_json().encode())
    # two ops moving the pointer at once cannot both take the same sequence number
    storage.create("history/00000001.json", Move(
        seq=1, action="promote", version="v1", previous=None, at="t", by="a",
        reason="r").model_dump_json().encode())
    assert not storage.create("history/00000001.json", b"torn")
    assert registry.current() == "v1"
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote("v1", "again")
    with pytest.raises(StaleProduction):
        registry.promote("v1", "again", expected="none")


def test_clear_errors(moto: MotoServer) -> None:
    with pytest.raises(StorageError, match="bucket no-such-bucket does not exist"):
        open_storage("s3://no-such-bucket/x", moto.url).read("y")
    down = open_storage("s3://any/x", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable, match=r"cannot reach S3 at http://127\.0\.0\.1"):
        down.list("")
    with pytest.raises(StorageError, match="names no bucket"):
        S3Storage.from_uri("s3:///prefix")


def test_a_bug_is_not_retried_as_an_outage(moto: MotoServer, bucket: str) -> None:
    """Only connection failures and 5xx are `StorageUnavailable`; a bad call propagates as is."""
    from botocore.exceptions import ParamValidationError

    storage = open_storage(f"s3://{bucket}/bugs", moto.url)
    with pytest.raises(ParamValidationError):
        storage.write("k", 123)  # type: ignore[arg-type]


def test_an_object_over_the_cap_is_refused_before_it_is_read(moto: MotoServer,
                                                             bucket: str) -> None:
    storage = open_storage(f"s3://{bucket}/big", moto.url)
    storage.write("big.jpg", b"x" * 5000)
    with pytest.raises(ObjectTooLarge, match="5000 bytes, over the 4096 limit"):
        storage.get("big.jpg", max_bytes=4096)
    assert storage.get("big.jpg", max_bytes=5000)[1].size == 5000


def test_bucket_init_step(moto: MotoServer, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from piston.storage.s3 import ensure_buckets, main

    assert ensure_buckets(["s3://made-here/x", "s3://made-here/y"], moto.url) == ["made-here"]
    assert ensure_buckets(["s3://made-here"], moto.url) == []  # idempotent
    monkeypatch.setenv("PISTON_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["s3://anything"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot reach S3 at http://127.0.0.1:")
