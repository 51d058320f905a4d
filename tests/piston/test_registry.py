"""The registry: publish once, promote (gated), roll back, history, crash safety."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from piston import arch
from piston.bundle import (
    SCHEMA_VERSION,
    BundleMeta,
    Gate,
    Predictor,
    create_bundle,
    new_version,
)
from piston.calibration import Calibration
from piston.errors import (
    InputError,
    InvalidName,
    RegistryError,
    StaleProduction,
    StorageUnavailable,
)
from piston.follow import ModelFollower
from piston.imaging import Contract
from piston.registry import Move, Registry
from piston.storage import LocalStorage


def make_bundle(registry: Registry, passed: bool = True) -> str:
    """A real (untrained) seed-CNN bundle, published to `registry`."""
    version = new_version()
    module = arch.build("seed_cnn", 3, 16, 16)
    meta = BundleMeta(
        version=version,
        classes=["a", "b", "c"],
        arch="seed_cnn",
        contract={"height": 16, "width": 16},
        calibration=Calibration(threshold=0.6),
        gates=[Gate(name="accuracy", value=0.95 if passed else 0.5, threshold=0.9, passed=passed)],
    )
    create_bundle(meta, module.state_dict(), {})
    registry.publish(version)
    return version


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalStorage(tmp_path / "registry"))


def test_promote_rollback_and_history(registry: Registry) -> None:
    first, second = make_bundle(registry), make_bundle(registry)
    assert registry.current() is None
    registry.promote(first, "initial")
    registry.promote(second, "better")
    move = registry.rollback("regression in the field")
    assert move.version == first and move.previous == second
    assert registry.current() == first
    history = registry.history()
    assert [(m.action, m.version) for m in history] == [
        ("promote", first),
        ("promote", second),
        ("rollback", first),
    ]
    assert history[-1].reason == "regression in the field"
    assert [row["production"] for row in registry.bundles()] == [True, False]


def test_rollback_to_a_named_version(registry: Registry) -> None:
    a, b, c = make_bundle(registry), make_bundle(registry), make_bundle(registry)
    for v in (a, b, c):
        registry.promote(v, "step")
    assert registry.rollback("back to the first", to=a).version == a


def test_failed_gates_need_force_and_reason(registry: Registry) -> None:
    bad = make_bundle(registry, passed=False)
    with pytest.raises(RegistryError, match="failed its quality gates"):
        registry.promote(bad, "try")
    with pytest.raises(RegistryError, match="needs a --reason"):
        registry.promote(bad, " ", force=True)
    move = registry.promote(bad, "customer demo", force=True)
    assert move.forced and registry.current() == bad


def test_clear_errors_for_impossible_moves(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="nothing is in production"):
        registry.rollback("why not")
    only = make_bundle(registry)
    registry.promote(only, "first")
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote(only, "again")
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback("nothing before")
    with pytest.raises(RegistryError, match="no bundle 'nope'"):
        registry.promote("nope", "typo")


def test_a_bundle_is_published_once(registry: Registry) -> None:
    version = make_bundle(registry)
    with pytest.raises(RegistryError, match="already in the registry"):
        registry.publish(version)


def test_a_crash_before_the_pointer_moves_leaves_it_intact(registry: Registry) -> None:
    a, b = make_bundle(registry), make_bundle(registry)
    registry.promote(a, "first")
    # A promote that died mid-write leaves only its temporary file behind.
    history = Path(registry.storage.uri) / "history"
    (history / ".00000002.json.abc.tmp").write_text('{"seq": 2, "version": "')
    assert registry.current() == a
    registry.promote(b, "after the crash")
    assert registry.current() == b


def test_concurrent_promotes_never_share_a_sequence_number(registry: Registry) -> None:
    versions = [make_bundle(registry) for _ in range(4)]
    errors: list[Exception] = []

    def promote(v: str) -> None:
        try:
            registry.promote(v, "race")
        except RegistryError as err:  # "already in production" is a fair outcome
            errors.append(err)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [m.seq for m in registry.history()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) + len(errors) == len(versions)


def test_fetch_imports_a_bundle_missing_from_the_local_store(registry: Registry) -> None:
    import bentoml

    version = make_bundle(registry)
    bentoml.models.delete(f"piston-classifier:{version}")
    path = registry.fetch(version)
    predictor = Predictor.load(path)
    assert predictor.meta.version == version
    assert os.path.isfile(Path(path) / "weights.pt")


def test_rollback_cannot_smuggle_in_a_bundle_that_failed_its_gates(registry: Registry) -> None:
    good, bad = make_bundle(registry), make_bundle(registry, passed=False)
    registry.promote(good, "first")
    with pytest.raises(RegistryError, match="never in production"):
        registry.rollback("oops", to=bad)
    assert registry.current() == good


def test_a_publish_that_died_halfway_is_finished_by_the_next(registry: Registry) -> None:
    version = make_bundle(registry)
    registry.storage.delete(f"bundles/{version}.json")  # as if it died before the metadata
    assert version not in registry.versions()
    registry.publish(version)
    assert version in registry.versions()


class FlakyStorage(LocalStorage):
    """A local store whose bundle archives cannot be read while `down` is set."""

    down = True

    def read(self, key: str) -> bytes:
        if self.down and key.endswith(".bentomodel"):
            raise StorageUnavailable("the store timed out")
        return super().read(key)


def test_a_storage_outage_does_not_refuse_a_bundle_for_good(
    registry: Registry, tmp_path: Path
) -> None:
    import bentoml

    version = make_bundle(registry)
    registry.promote(version, "first")
    bentoml.models.delete(f"piston-classifier:{version}")  # must come from the store
    flaky = FlakyStorage(tmp_path / "registry")
    follower = ModelFollower(Registry(flaky))
    assert not follower.refresh()
    assert follower.status.refused == {} and "timed out" in (follower.status.last_error or "")
    flaky.down = False
    assert follower.refresh() and follower.status.version == version


def test_a_stale_expected_version_is_refused_and_changes_nothing(registry: Registry) -> None:
    first, second = make_bundle(registry), make_bundle(registry)
    registry.promote(first, "first", expected="none")
    registry.promote(second, "second", expected=first)
    registry.rollback("regression", expected=second)
    before = registry.history()
    with pytest.raises(StaleProduction, match=f"production is at {first}, not {second}"):
        registry.rollback("regression", expected=second)  # the same request, sent again
    with pytest.raises(StaleProduction):
        registry.promote(second, "late", expected="none")
    assert registry.history() == before and registry.current() == first
    assert StaleProduction("x").status == 409


@pytest.mark.parametrize("name", ["../x", "../../outside/evil", "/etc/passwd", "a/../b", "none"])
def test_names_that_would_leave_the_registry_are_refused(registry: Registry, tmp_path: Path,
                                                         name: str) -> None:
    (tmp_path / "x.json").write_text('{"version": "x"}')
    with pytest.raises(InvalidName):
        registry.promote(name, "sneaky", force=True)
    assert registry.history() == []
    with pytest.raises(InvalidName):
        registry.storage.read("../x.json")


def test_a_tampered_archive_is_refused(registry: Registry) -> None:
    import bentoml

    version = make_bundle(registry)
    assert registry.meta(version).archive_sha256
    key = f"bundles/{version}.bentomodel"
    data = bytearray(registry.storage.read(key))
    data[len(data) // 2] ^= 0xFF
    registry.storage.write(key, bytes(data))
    bentoml.models.delete(f"piston-classifier:{version}")
    with pytest.raises(RegistryError, match="does not match its recorded SHA-256"):
        registry.fetch(version)
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(f"piston-classifier:{version}")


def test_an_archive_holding_another_version_is_refused(registry: Registry) -> None:
    import bentoml

    real, other = make_bundle(registry), make_bundle(registry)
    swapped = registry.storage.read(f"bundles/{other}.bentomodel")
    registry.storage.write(f"bundles/{real}.bentomodel", swapped)
    digest = hashlib.sha256(swapped).hexdigest()  # a sidecar that vouches for the wrong archive
    meta = registry.meta(real).model_copy(update={"archive_sha256": digest})
    registry.storage.write(f"bundles/{real}.json", meta.model_dump_json().encode())
    bentoml.models.delete(f"piston-classifier:{real}")
    bentoml.models.delete(f"piston-classifier:{other}")
    with pytest.raises(RegistryError, match=f"holds piston-classifier:{other}"):
        registry.fetch(real)
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(f"piston-classifier:{other}")


def test_history_entries_carry_the_archive_digest(registry: Registry) -> None:
    version = make_bundle(registry)
    move = registry.promote(version, "first")
    assert move.sha256 == registry.meta(version).archive_sha256
    assert registry.history()[-1].sha256 == move.sha256


def test_a_foreign_key_under_history_is_ignored_with_a_warning(
        registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    """What the history-poisoning job wrote (`history/jobs/<id>.json`) is never production."""
    first, second = make_bundle(registry), make_bundle(registry)
    registry.promote(first, "first")
    summary = b'{"job_id": "x", "src": "/data", "out": "registry/history", "total": 3}'
    for key in ("history/jobs/0b1c.json", "history/results.jsonl", "history/99.json",
                "bundles/nested/x.json", "bundles/_parts/y.json"):
        registry.storage.write(key, summary)
    with caplog.at_level(logging.WARNING, logger="piston.registry"):
        assert registry.current() == first
        assert registry.versions() == sorted([first, second])
        registry.promote(second, "second")
        assert registry.rollback("back").version == first
        assert [m.seq for m in registry.history()] == [1, 2, 3]
    warned = [r.getMessage() for r in caplog.records if "foreign object" in r.getMessage()]
    assert len(warned) == 5 and any("history/jobs/0b1c.json" in w for w in warned)  # once each


def test_a_history_entry_that_does_not_parse_names_its_key_and_the_follower_keeps_serving(
        registry: Registry) -> None:
    version = make_bundle(registry)
    registry.promote(version, "first")
    follower = ModelFollower(registry)
    assert follower.refresh() and follower.status.version == version
    registry.storage.write("history/00000002.json", b'{"job_id": "x"}')
    with pytest.raises(RegistryError, match=r"history entry .*history/00000002\.json does not"
                                            r" parse \(seq: Field required\)"):
        registry.current()
    assert follower.refresh() is False and follower.current is not None
    assert "history/00000002.json" in (follower.status.last_error or "")
    registry.storage.write("history/00000002.json",
                           registry.storage.read("history/00000001.json"))  # seq 1 in key 2
    with pytest.raises(RegistryError, match="says seq 1"):
        registry.current()

    class Unparsed(Registry):  # a pydantic error that is not ours still leaves it serving
        def current(self) -> str | None:
            Move.model_validate_json(b"{}")
            return None

    stubborn = ModelFollower(Unparsed(registry.storage))
    stubborn._current = follower.current
    assert stubborn.refresh() is False and stubborn.current is follower.current
    assert "validation error" in (stubborn.status.last_error or "")


def test_an_archive_is_checked_against_its_history_entries_too(registry: Registry) -> None:
    import bentoml

    real, other = make_bundle(registry), make_bundle(registry)
    registry.promote(real, "first")
    swapped = registry.storage.read(f"bundles/{other}.bentomodel")
    registry.storage.write(f"bundles/{real}.bentomodel", swapped)
    meta = registry.meta(real).model_copy(  # the sidecar rewritten to match: still caught
        update={"archive_sha256": registry.meta(other).archive_sha256})
    registry.storage.write(f"bundles/{real}.json", meta.model_dump_json().encode())
    bentoml.models.delete(f"piston-classifier:{real}")
    with pytest.raises(RegistryError, match="does not match its recorded SHA-256 in history"
                                            " entry 1"):
        registry.fetch(real)
    with pytest.raises(RegistryError, match="history entry 1"):
        registry.archive(real)


def test_a_reason_has_a_length_limit(registry: Registry) -> None:
    version = make_bundle(registry)
    with pytest.raises(InputError, match="over the limit of 500"):
        registry.promote(version, "x" * 501)
    assert registry.history() == []


def test_bundle_json_round_trips_with_a_typed_contract_and_its_schema_version(
        registry: Registry) -> None:
    meta = registry.meta(make_bundle(registry))
    assert meta.schema_version == SCHEMA_VERSION and meta.contract == Contract(16, 16)
    assert BundleMeta.parse(meta.model_dump_json(), "here") == meta


@pytest.mark.parametrize(("change", "reason"), [
    (lambda raw: {k: v for k, v in raw.items() if k != "schema_version"}, "no schema_version"),
    (lambda raw: {**raw, "schema_version": SCHEMA_VERSION + 1}, "has schema_version"),
    (lambda raw: {**raw, "contract": {"height": "tall"}}, "valid integer"),
])
def test_a_bundle_json_of_another_schema_is_refused_in_one_line(
        registry: Registry, change: Any, reason: str) -> None:
    version = make_bundle(registry)
    raw = json.loads(registry.storage.read(f"bundles/{version}.json"))
    registry.storage.write(f"bundles/{version}.json", json.dumps(change(raw)).encode())
    with pytest.raises(RegistryError, match=f"cannot read the bundle at .*{reason}.*retrain it"):
        registry.meta(version)
