"""Verified matches of one pattern pass, reused for subgraphs that read the same (every layer
of a model): the semantic checks cost a second or more per candidate on a CPU, per layer.

A result is reused only where :func:`.fingerprint.fingerprint` of the new candidate equals the
one of the verified candidate, entry for entry, so the checks would read the same values and
reach the same verdict; the reused match names the new candidate's nodes. With
``FSA_COMPILE_MEMO_CHECK=1`` (the test suite sets it) every reuse is checked by a full analysis,
and a difference is logged and counted in :attr:`Memo.mismatches`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os

from .fingerprint import Uncacheable, fingerprint
from .points import mutations

log = logging.getLogger("fsa_compile")

# (output, differing fields) of every reused verdict the check mode found wrong, in this process
MISMATCHES: list = []

_NODES = ("output", "softmax", "q", "k", "v", "selection")


def check_requested() -> bool:
    return os.environ.get("FSA_COMPILE_MEMO_CHECK", "") not in ("", "0")


class Memo:
    def __init__(self, check: bool | None = None):
        self.check = check_requested() if check is None else check
        self._entries: dict = {}  # graph-level key -> [(expanded labels, fingerprint, match, labels)]
        self.hits = 0
        self.mismatches: list = []
        self.reused_from: dict = {}  # output node name -> the output name whose verdict it reused

    @staticmethod
    def _setup(a):
        """The walk's roots, the per-node flags and the graph-level part of the key of analysis ``a``."""
        roots = list(dict.fromkeys(n for n in (a.output, a.anchor.node, a.anchor.pre) if n is not None))
        held = set(a.leaves) | ({a.anchor.node} if a.anchor.kind == "softmax" else set())

        def flags(n):
            return (n is a.selection, n in held, n in a.stale)

        key = (a.anchor.kind, a.anchor.dim, a.seed, a.topk_len, a._graph_constants(), len(roots))
        return roots, flags, key

    def remember(self, a, match) -> None:
        try:
            roots, flags, key = self._setup(a)
            read = set(a.entered) | set(match.visited) | set(roots)
            read |= {u for n in list(read) for u in mutations(n)}
            entries, nodes = fingerprint(a.gm, roots, lambda n, i: i < len(roots) or n in read, flags)
        except Uncacheable as e:
            log.debug("fsa_compile: %s is verified again in identical layers: %s", match.output.name, e)
            return
        labels = {n: i for i, n in enumerate(nodes)}
        if not read <= labels.keys():  # the checks reached a node the walk does not: never reuse
            return
        names = {f: labels[getattr(match, f)] for f in _NODES}
        names["visited"] = frozenset(labels[n] for n in match.visited)
        expanded = frozenset(labels[n] for n in read)
        self._entries.setdefault(key, []).append((expanded, entries, match, names))

    def recall(self, a):
        """The match of an earlier candidate that reads what ``a`` would, for ``a``'s nodes; or None."""
        try:
            roots, flags, key = self._setup(a)
        except Uncacheable:
            return None
        for expanded, entries, match, names in self._entries.get(key, ()):
            try:
                got, nodes = fingerprint(a.gm, roots, lambda n, i: i in expanded, flags, expected=entries)
            except Uncacheable:
                continue
            if got is None or nodes[names["selection"]] is not a.selection:
                continue
            self.hits += 1
            self.reused_from[a.output.name] = match.output.name
            return dataclasses.replace(
                match, **{f: nodes[names[f]] for f in _NODES}, layouts=copy.deepcopy(match.layouts),
                notes=list(match.notes), visited=frozenset(nodes[i] for i in names["visited"]))
        return None

    def compare(self, recalled, match) -> None:
        """Check mode: the reused verdict against the full analysis' one."""
        diff = [f.name for f in dataclasses.fields(match)
                if not _same(getattr(recalled, f.name), getattr(match, f.name))]
        if diff:
            self.mismatches.append((match.output.name, diff))
            MISMATCHES.append((match.output.name, diff))
            log.error("fsa_compile: the verdict reused for %s differs from its own analysis in %s",
                      match.output.name, ", ".join(diff))


def _same(a, b) -> bool:
    if isinstance(a, (frozenset, set)):
        return a == b  # of nodes: by identity
    return a is b if hasattr(a, "graph") else a == b
