"""The cluster's documents in its store: the cluster spec (hosts, networks, pools), the
state documents (maintenance, ADS rules and last run, HA settings, CVM records, the CPU
level) and named collections (templates, the image catalogue).

The coordination store (ZooKeeper, or embedded SQLite for one machine) is the only
truth; every controller reads the same documents, and every change is a compare-and-
set, so two writers never lose each other's update. Locks (one maintenance run per
host, one migration per VM) are the store's locks, so they hold across machines.

Everything read is decoded defensively: a document that is not a JSON object, or a
collection name that is not a plain name, is a clear error naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ahvlite.errors import Conflict, InvalidSpec, NotFound, OperationTimeout
from ahvlite.kv import MUST_NOT_EXIST, DocStore, VersionMismatch
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build

SPEC_KEY = "cluster/spec"
STATE = "cluster/state"
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

Doc = dict[str, Any]


def decode(raw: bytes, what: str) -> Doc:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSpec(what, "(stored document)", f"JSON ({exc})",
                          hint="fix or delete the key in the store") from None
    if not isinstance(doc, dict):
        raise InvalidSpec(what, "(stored document)", "a JSON object")
    return doc


def encode(doc: Doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class ClusterState:
    """Keyed JSON documents of one cluster in a :class:`~ahvlite.kv.DocStore`."""

    def __init__(self, store: DocStore) -> None:
        self.store = store

    # -- state documents (one per key) --------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        if not KEY_RE.fullmatch(key):
            raise InvalidSpec("state key", key, "lower-case letters, digits, '_', '.', '-'")
        return f"{STATE}/{key}"

    def get(self, key: str, default: Doc | None = None) -> Doc:
        got = self.store.get(self._key(key))
        if got is None:
            return dict(default or {})
        return decode(got.value, f"cluster state {key}")

    def put(self, key: str, doc: Doc) -> None:
        self.store.put(self._key(key), encode(doc))

    def update(self, key: str, change: Callable[[Doc], Doc | None]) -> Doc:
        """Apply ``change`` to the current document and store it by compare-and-set,
        again on a concurrent change; returns the stored result (``change`` may edit in
        place and return None; it may raise to leave the document as it is)."""
        return self._update(self._key(key), f"cluster state {key}", change)

    def _update(self, path: str, what: str, change: Callable[[Doc], Doc | None]) -> Doc:
        for _ in range(100):
            got = self.store.get(path)
            doc = {} if got is None else decode(got.value, what)
            new = change(doc)
            doc = doc if new is None else new
            try:
                self.store.put(path, encode(doc), MUST_NOT_EXIST if got is None
                               else got.version)
                return doc
            except VersionMismatch:
                continue  # someone wrote meanwhile: apply the change to theirs
        raise Conflict(f"{what}: changed by others 100 times in a row", hint="try again")

    # -- named collections (templates, images) -----------------------------------------

    @staticmethod
    def _named(collection: str, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise InvalidSpec(f"{collection} name", name, "letters, digits, '_', '.', '-'")
        return f"{collection}/{name}"

    def doc(self, collection: str, name: str) -> Doc | None:
        got = self.store.get(self._named(collection, name))
        return None if got is None else decode(got.value, f"{collection}/{name}")

    def docs(self, collection: str) -> dict[str, Doc]:
        """Every document of the collection by name; undecodable ones raise."""
        return {name: decode(v.value, f"{collection}/{name}")
                for name, v in sorted(self.store.children(collection).items())
                if NAME_RE.fullmatch(name)}

    def create_doc(self, collection: str, name: str, doc: Doc) -> None:
        try:
            self.store.put(self._named(collection, name), encode(doc), MUST_NOT_EXIST)
        except VersionMismatch:
            raise Conflict(f"{collection.rstrip('s')} {name} already exists") from None

    def update_doc(self, collection: str, name: str,
                   change: Callable[[Doc], Doc | None]) -> Doc:
        path = self._named(collection, name)
        if self.store.get(path) is None:
            raise NotFound(f"no {collection.rstrip('s')} named {name!r}")
        return self._update(path, f"{collection}/{name}", change)

    def delete_doc(self, collection: str, name: str) -> bool:
        path = self._named(collection, name)
        if self.store.get(path) is None:
            return False
        self.store.delete(path)
        return True

    # -- locks --------------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str, *, busy: str, hint: str | None = None,
             timeout_s: float = 0.5) -> Iterator[None]:
        """Hold the store lock ``name``; Conflict(``busy``) when someone else holds it."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self.store.lock(f"cluster-{self._key(name)[len(STATE) + 1:]}",
                                                    timeout_s))
            except OperationTimeout:
                raise Conflict(busy, hint=hint) from None
            yield

    # -- the cluster spec ---------------------------------------------------------------

    def spec(self) -> ClusterSpec:
        """The cluster spec from the store, with this state attached."""
        got = self.store.get(SPEC_KEY)
        if got is None:
            raise NotFound("the store holds no cluster yet",
                           hint="`ahvlite cluster apply -f cluster.yaml`")
        spec = build(ClusterSpec, **decode(got.value, "cluster spec"))
        spec._state = self
        return spec

    def spec_version(self) -> int | None:
        got = self.store.get(SPEC_KEY)
        return None if got is None else got.version

    def write_spec(self, spec: ClusterSpec, expected_version: int | None) -> int:
        """Store ``spec`` by compare-and-set (``None``: it must not exist yet)."""
        return self.store.put(SPEC_KEY, encode(spec.model_dump(mode="json", exclude_none=True)),
                              MUST_NOT_EXIST if expected_version is None else expected_version)
