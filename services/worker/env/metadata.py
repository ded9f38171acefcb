"""`RE.md` kept in the state store, so that scan_id goes on across environments and hosts.

Bluesky profiles make `RE.md` persistent (a `PersistentDict` in a local directory); here it
lives in a JetStream KV bucket (`QS_<PREFIX>_RE_MD`, replicated like the other buckets), one
JSON value under one key. `PersistentMetadata` is the MutableMapping the RunEngine gets as
`RE.md`: reads come from memory; every change is written through, compare-and-set on the
revision, before the assignment returns. The RunEngine sets `md["scan_id"]` at the start of
each run and reads it back for the start document, so a scan_id is stored before any
document carries it: an environment that dies mid-run never hands out the same one again.
If another writer changed the value in between (an environment that was thought dead), the
change is applied on top of what is stored and a scan_id is raised above the stored one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js import api as jsapi
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from qserver.jsutil import default_replicas, transient
from qserver.protocol.worker import MetadataReply

if TYPE_CHECKING:
    from services.worker.env.link import NatsLink

logger = logging.getLogger(__name__)

MD_KEY = "md"
SCAN_ID = "scan_id"
# A change waits this long for the store; then the assignment (and so the run) fails.
WRITE_TIMEOUT_S = 10.0
CONFLICT_RETRIES = 5

Read = Callable[[], tuple[dict[str, Any], int]]  # (values, revision); revision 0: no value
Write = Callable[[bytes, int], int]  # (data, expected revision) -> new revision


class Conflict(Exception):
    """The stored value is not at the expected revision: another writer changed it."""


def _enc_hook(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode_md(values: dict[str, Any], warned: set[str] | None = None) -> bytes:
    """JSON of the values; keys whose values are not JSON are left out (with a warning)."""
    try:
        return _encoder.encode(values)
    except (TypeError, msgspec.EncodeError):
        pass
    kept: dict[str, Any] = {}
    for key, value in values.items():
        try:
            _encoder.encode(value)
        except (TypeError, msgspec.EncodeError) as e:
            if warned is None or key not in warned:
                logger.warning("RE.md[%r] is not stored (kept in memory only): %s", key, e)
                if warned is not None:
                    warned.add(key)
            continue
        kept[str(key)] = value
    return _encoder.encode(kept)


def decode_md(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        logger.error("the stored RE.md is not JSON: starting from the startup code's RE.md")
        return {}
    return value if isinstance(value, dict) else {}


def _scan_id(values: dict[str, Any]) -> int | None:
    v = values.get(SCAN_ID)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def merge_startup(stored: dict[str, Any], startup: dict[str, Any]) -> dict[str, Any]:
    """What RE.md is after an open: the stored values, overridden by what the startup code
    set (as when a profile loads a PersistentDict and then assigns), except that scan_id
    never goes below the stored one."""
    merged = {**stored, **startup}
    before = _scan_id(stored)
    if before is not None and (_scan_id(merged) or 0) < before:
        merged[SCAN_ID] = before
    return merged


def apply_change(
    stored: dict[str, Any], key: str, value: Any, *, delete: bool = False
) -> dict[str, Any]:
    """One change applied on top of the stored values (after a conflict, or normally)."""
    new = dict(stored)
    if delete:
        new.pop(key, None)
        return new
    new[key] = value
    before = _scan_id(stored)
    if key == SCAN_ID and before is not None and _scan_id(new) is not None and value <= before:
        new[key] = before + 1
    return new


class PersistentMetadata(MutableMapping[str, Any]):
    """A dict-like `RE.md` whose every change is stored before the assignment returns.

    Changes come from the RunEngine's thread (scan_id at each run) or the main thread;
    they are serialized by a lock. Reads take no lock (the values are replaced whole), so
    a reader on the NATS thread never waits for a write that needs the NATS thread.
    The mapping the startup code had made `RE.md` (a plain dict, or the profile's own
    `PersistentDict`) gets every change too.
    """

    def __init__(
        self,
        values: dict[str, Any],
        revision: int,
        read: Read,
        write: Write,
        inner: MutableMapping[str, Any] | None = None,
    ) -> None:
        self._values = dict(values)
        self._revision = revision
        self._read = read
        self._write = write
        self._inner = inner
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def revision(self) -> int:
        return self._revision

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PersistentMetadata({self._values!r})"

    def __copy__(self) -> dict[str, Any]:
        return dict(self._values)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        # The RunEngine deep-copies its metadata for each run: a plain dict, not this store.
        return copy.deepcopy(self._values, memo)

    def __setitem__(self, key: str, value: Any) -> None:
        self._change(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self._values:
            raise KeyError(key)
        self._change(key, None, delete=True)

    def _change(self, key: str, value: Any, *, delete: bool = False) -> None:
        with self._lock:
            old = self._values
            base, revision = old, self._revision
            for _ in range(CONFLICT_RETRIES):
                new = apply_change(base, key, value, delete=delete)
                try:
                    self._revision = self._write(encode_md(new, self._warned), revision)
                    break
                except Conflict:
                    base, revision = self._read()
                    logger.warning(
                        "RE.md was changed by another writer (revision %d): applying on top",
                        revision,
                    )
            else:
                raise RuntimeError(f"RE.md[{key!r}] was not stored: it kept changing under us")
            # Values that are not JSON live in memory only (as in a plain dict).
            for k in self._warned:
                if k in old and k not in new and not (delete and k == key):
                    new[k] = old[k]
            self._values = new
        self._mirror(key, new.get(key), delete)

    def _mirror(self, key: str, value: Any, delete: bool) -> None:
        if self._inner is None:
            return
        try:
            if delete:
                self._inner.pop(key, None)
            else:
                self._inner[key] = value
        except Exception as e:  # the profile's own store: ours is the one that counts
            logger.warning("the startup code's RE.md did not take %r: %r", key, e)


class MdBucket:
    """The KV side, called from the RunEngine's or the main thread (never the NATS thread)."""

    def __init__(self, link: NatsLink, bucket: str) -> None:
        self.link = link
        self.bucket = bucket
        self._kv: KeyValue | None = None

    async def _open(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.link.js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await self.link.js.create_key_value(
                    bucket=self.bucket,
                    history=1,
                    storage=jsapi.StorageType.FILE,
                    replicas=default_replicas(),
                )
        return self._kv

    async def _patiently(self, step: Callable[[], Any]) -> Any:
        """Run `step`, again while JetStream is away for now (a stream electing its leader
        when a NATS node dies): a run must not fail for a store that answers a second later.
        """
        deadline = time.monotonic() + WRITE_TIMEOUT_S - 1.0
        delay = 0.05
        while True:
            try:
                return await step()
            except Exception as e:
                if not transient(e) or time.monotonic() + delay > deadline:
                    raise
                logger.info("RE.md store not answering (%r); trying again", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _read(self) -> tuple[dict[str, Any], int]:
        async def step() -> tuple[dict[str, Any], int]:
            kv = await self._open()
            try:
                entry = await kv.get(MD_KEY)
            except KeyNotFoundError:
                return {}, 0
            return decode_md(entry.value), entry.revision or 0

        return await self._patiently(step)  # type: ignore[no-any-return]

    async def _write(self, data: bytes, revision: int) -> int:
        async def step() -> int:
            kv = await self._open()
            try:
                # Revision 0 expects no value yet: the first write creates it. A write stored
                # whose answer was lost comes back as a Conflict: applied again on top.
                return await kv.update(MD_KEY, data, last=revision)
            except KeyWrongLastSequenceError:
                raise Conflict from None

        return await self._patiently(step)  # type: ignore[no-any-return]

    def _call(self, coro: Any) -> Any:
        if self.link.on_loop_thread():
            coro.close()
            raise RuntimeError("RE.md cannot be changed from the NATS thread")
        try:
            return self.link.call(coro, WRITE_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(
                f"RE.md was not stored: NATS did not answer in {WRITE_TIMEOUT_S:g} s"
            ) from None

    def read(self) -> tuple[dict[str, Any], int]:
        return self._call(self._read())  # type: ignore[no-any-return]

    def write(self, data: bytes, revision: int) -> int:
        return self._call(self._write(data, revision))  # type: ignore[no-any-return]


def persist(run_engine: Any, link: NatsLink, bucket: str) -> PersistentMetadata:
    """Make `run_engine.md` persistent: the stored values merged with the startup code's."""
    store = MdBucket(link, bucket)
    stored, revision = store.read()
    inner = run_engine.md
    merged = merge_startup(stored, dict(inner))
    md = PersistentMetadata(stored, revision, store.read, store.write, inner)
    for key, value in merged.items():  # what the startup code set (and scan_id), stored now
        if key not in stored or stored[key] != value:
            md[key] = value
    run_engine.md = md
    logger.info("RE.md is kept in %s (scan_id %s)", bucket, md.get(SCAN_ID))
    return md


# ----- `re_metadata`: what clients may read of RE.md -----

PERMITTED_KEYS_ENV = "QSERVER_PERMITTED_RE_METADATA_KEYS"  # the reference's name


def permitted_paths(text: str) -> set[tuple[str, ...]]:
    """`/a/b:/c` -> {("a", "b"), ("c",)}; `/` (the default) is the empty path: everything."""
    paths = set()
    for entry in text.split(":"):
        entry = entry.strip()
        if entry:
            paths.add(tuple(part for part in entry.strip("/").split("/") if part))
    return paths


def filter_md(values: Mapping[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """The keys of `values` that a permitted path names, with all below them; a mapping on
    the way to a permitted path keeps only what the path leads to (and is left out when
    nothing is)."""
    if () in paths:
        return dict(values)

    def walk(d: Mapping[Any, Any], at: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in d.items():
            path = (*at, str(key))
            if path in paths:
                out[key] = value
            elif isinstance(value, Mapping):
                below = walk(value, path)
                if below:
                    out[key] = below
        return out

    return walk(values, ())


def metadata_reply(run_engine: Any, permitted: str | None = None) -> MetadataReply:
    """The reply to `env.metadata`, with the reference's texts for what can go wrong."""
    if run_engine is None:
        return MetadataReply(success=False, msg="Run Engine does not exist in worker environment")
    if not hasattr(run_engine, "md"):
        return MetadataReply(success=False, msg="Run Engine does not have a metadata attribute")
    try:
        values = dict(run_engine.md)
    except Exception as e:
        return MetadataReply(
            success=False, msg=f"Failed to convert Run Engine metadata to dictionary: {e}"
        )
    text = (os.environ.get(PERMITTED_KEYS_ENV) or "/") if permitted is None else permitted
    try:
        # Through JSON: what a client gets (numpy values as lists, dates as ISO text).
        jsonable = msgspec.json.decode(_encoder.encode(filter_md(values, permitted_paths(text))))
    except (TypeError, msgspec.EncodeError) as e:
        return MetadataReply(success=False, msg=f"Failed to serialize RE metadata with JSON: {e}")
    return MetadataReply(re_metadata=jsonable)
