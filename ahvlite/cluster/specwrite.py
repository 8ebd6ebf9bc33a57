"""Changing the stored cluster spec: every change a compare-and-set, never a lost update.

Two admins running ``net create`` at once both read version N; one write of N+1 wins,
the other finds the version moved, reads again and applies its change on top. A
``cluster apply`` is planned against one version and refused if the spec moved before
it is written (the file would silently undo someone's change otherwise); the
documents it imports from beside a cluster file go in the same transaction, and only
those the store does not have: the store's own are newer and stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ahvlite.cluster.state import SPEC_KEY, STATE, ClusterState, decode, encode
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.kv import MUST_NOT_EXIST, DocStore, Put, VersionMismatch
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build

TEMPLATES = "templates"
ATTEMPTS = 100
MAX_DOCUMENT_BYTES = 512 * 1024  # all imported documents together, one transaction
_DOC_KEY = re.compile(r"^(?:cluster/state/[a-z0-9][a-z0-9_.-]{0,62}"
                      r"|templates/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})$")
DOC_KEYS = "cluster/state/KEY (lower-case KEY) or templates/NAME"


def spec_doc(spec: ClusterSpec) -> dict[str, Any]:
    """The stored form of a spec (what ``ClusterState.write_spec`` writes)."""
    return spec.model_dump(mode="json", exclude_none=True)


def read_spec(state: ClusterState) -> tuple[ClusterSpec | None, int | None]:
    """The stored spec and its version, read once (None, None: no cluster yet)."""
    got = state.store.get(SPEC_KEY)
    if got is None:
        return None, None
    spec = build(ClusterSpec, **decode(got.value, "cluster spec"))
    spec._state = state
    return spec, got.version


def change_spec(state: ClusterState, change: Callable[[ClusterSpec], ClusterSpec | None], *,
                guard: Callable[[], object] = lambda: None) -> tuple[ClusterSpec, bool]:
    """Apply ``change`` to the stored spec by compare-and-set, again on top of a
    concurrent change; (the spec now, whether it was written). ``change`` returns None
    (or an equal spec) when there is nothing to do, or raises to refuse; ``guard`` runs
    right before a write (the leader's fencing check)."""
    for _ in range(ATTEMPTS):
        spec, version = read_spec(state)
        if spec is None:
            raise NotFound("the store holds no cluster yet",
                           hint="`ahvlite cluster apply -f cluster.yaml`")
        new = change(spec)
        if new is None or spec_doc(new) == spec_doc(spec):
            return spec, False
        guard()
        try:
            state.write_spec(new, version)
        except VersionMismatch:
            continue  # someone wrote meanwhile: apply the change to theirs
        new._state = state
        return new, True
    raise Conflict(f"the cluster spec changed under us {ATTEMPTS} times in a row",
                   hint="try again")


def check_documents(documents: object) -> dict[str, dict[str, Any]]:
    """Documents offered for import: keys of the cluster's own kinds, JSON objects."""
    if not isinstance(documents, dict):
        raise InvalidSpec("documents", type(documents).__name__, "an object of key: document")
    size = 0
    for key, doc in documents.items():
        if not isinstance(key, str) or not _DOC_KEY.fullmatch(key):
            raise InvalidSpec("documents", key, DOC_KEYS)
        if not isinstance(doc, dict):
            raise InvalidSpec(f"documents.{key}", type(doc).__name__, "a JSON object")
        size += len(encode(doc))
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidSpec("documents", f"{size} bytes", f"at most {MAX_DOCUMENT_BYTES} "
                          "bytes together (one store transaction)")
    return documents


def document_keys(store: DocStore) -> set[str]:
    """The keys of the cluster's documents the store holds (state documents, templates)."""
    return ({f"{STATE}/{k}" for k in store.children(STATE)}
            | {f"{TEMPLATES}/{k}" for k in store.children(TEMPLATES)})


def apply_spec(state: ClusterState, desired: ClusterSpec, planned_version: int | None,
               documents: dict[str, dict[str, Any]], *,
               guard: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """Store ``desired`` over ``planned_version`` (None: no spec yet) and the documents
    the store lacks, in one transaction. The spec already equal to ``desired`` is not
    written again (applying twice changes nothing; a resumed apply finds its write);
    a spec that moved since the plan is a Conflict and nothing is written."""
    want = spec_doc(desired)
    for _ in range(ATTEMPTS):
        got = state.store.get(SPEC_KEY)
        ops: list[Put] = []
        write = got is None or decode(got.value, "cluster spec") != want
        if write:
            version = None if got is None else got.version
            if version != planned_version:
                raise Conflict(f"the cluster spec changed since this apply was planned "
                               f"(version {planned_version} is now {version}); nothing "
                               "was written", hint="run `ahvlite cluster apply` again: it "
                               "plans against the newest spec")
            ops.append(Put(SPEC_KEY, encode(want),
                           MUST_NOT_EXIST if got is None else got.version))
        have = document_keys(state.store)
        imported = sorted(k for k in documents if k not in have)
        ops += [Put(k, encode(documents[k]), MUST_NOT_EXIST) for k in imported]
        result = {"spec_written": write, "imported": imported,
                  "kept": sorted(k for k in documents if k in have)}
        if not ops:
            return result
        guard()
        try:
            state.store.transaction(list(ops))
        except VersionMismatch:
            continue  # a document appeared (or the spec moved): look again
        return result
    raise Conflict(f"the cluster changed under us {ATTEMPTS} times in a row", hint="try again")
