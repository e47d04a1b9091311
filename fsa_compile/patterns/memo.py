"""Verified matches, reused for subgraphs that read the same: every layer of a model, and the
same model compiled again in the process (its prefill after its training step, say). The
semantic checks cost seconds per candidate on a CPU.

A result is reused only where :func:`.fingerprint.fingerprint` of the new candidate equals the
one of the verified candidate, entry for entry, so the checks would read the same values and
reach the same verdict; the reused match names the new candidate's nodes. The memo keeps no
graph alive: it holds fingerprints and the verdicts' numbers, not nodes. With
``FSA_COMPILE_MEMO_CHECK=1`` (the test suite sets it) the first reuse of every verdict is checked
by a full analysis (``=all``: every reuse), and a difference is logged and counted in
:data:`MISMATCHES`.
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

_NODES = ("output", "softmax", "q", "k", "v", "selection", "positions")  # (positions: maybe None)

# verdicts kept per key (and keys kept), the oldest dropped first
CAPACITY = 64


def check_requested() -> str | None:
    """None, "first" (the first reuse of each verdict is checked) or "all"."""
    value = os.environ.get("FSA_COMPILE_MEMO_CHECK", "")
    return None if value in ("", "0") else "all" if value == "all" else "first"


class Memo:
    def __init__(self, check: str | None = "env"):
        self._check = check
        self.check = check_requested() if check == "env" else check
        self._entries: dict = {}  # key -> [(expanded labels, fingerprint, verdict, labels, origin)]
        self._pass = 0
        self.reused_from: dict = {}  # this pass: output node name -> where the verdict it reused came from

    def new_pass(self) -> None:
        """A pattern pass over another graph begins (reuse within it is named by node)."""
        self._pass += 1
        self.reused_from = {}
        self.check = check_requested() if self._check == "env" else self._check

    def forget(self) -> None:
        self._entries.clear()

    @staticmethod
    def _setup(a):
        """The walk's roots, the per-node flags and the rest of the key of analysis ``a``."""
        roots = list(dict.fromkeys(n for n in (a.output, a.anchor.node, a.anchor.pre) if n is not None))
        held = set(a.leaves) | ({a.anchor.node} if a.anchor.kind == "softmax" else set())

        def flags(n):
            return (n is a.selection, n is a.positions, n in held, n in a.stale)

        key = (a.anchor.kind, a.anchor.dim, a.seed, a.topk_len, len(roots))
        return roots, flags, key

    @staticmethod
    def _same_block_sizes(a, reads) -> bool:
        """Whether ``a``'s graph offers the block sizes the verdict tried, in the same order (and
        no more where it tried them all): the only thing the checks read of the rest of the graph."""
        for (S, n, T), tried, exhausted in reads:
            sizes = a.block_sizes_for(S, n, T)
            if tuple(sizes[: len(tried)]) != tried or (exhausted and len(sizes) != len(tried)):
                return False
        return True

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
        names = {f: None if getattr(match, f) is None else labels[getattr(match, f)] for f in _NODES}
        names["visited"] = frozenset(labels[n] for n in match.visited)
        names["block sizes"] = tuple(a.block_size_reads)
        expanded = frozenset(labels[n] for n in read)
        verdict = dataclasses.replace(match, **{f: None for f in _NODES}, visited=frozenset())
        origin = [self._pass, match.output.name, False]  # the last: a reuse was checked
        kept = self._entries.setdefault(key, [])
        kept.append((expanded, entries, verdict, names, origin))
        del kept[:-CAPACITY]
        while len(self._entries) > CAPACITY:
            del self._entries[next(iter(self._entries))]

    def recall(self, a):
        """``(match, check)``: the verdict of an earlier candidate that reads what ``a`` would, for
        ``a``'s nodes, or None; and whether to check it with a full analysis."""
        try:
            roots, flags, key = self._setup(a)
        except Uncacheable:
            return None, False
        for expanded, entries, verdict, names, origin in self._entries.get(key, ()):
            pass_, name, checked = origin
            try:
                got, nodes = fingerprint(a.gm, roots, lambda n, i: i in expanded, flags, expected=entries)
            except Uncacheable:
                continue
            if got is None or nodes[names["selection"]] is not a.selection or (
                    None if names["positions"] is None else nodes[names["positions"]]) is not a.positions \
                    or not self._same_block_sizes(
                    a, names["block sizes"]):
                continue
            self.reused_from[a.output.name] = name if pass_ == self._pass else f"{name} of an earlier graph"
            check = self.check == "all" or (self.check == "first" and not checked)
            origin[2] = origin[2] or check
            return dataclasses.replace(
                verdict, **{f: None if names[f] is None else nodes[names[f]] for f in _NODES}, layouts=copy.deepcopy(verdict.layouts),
                notes=list(verdict.notes), visited=frozenset(nodes[i] for i in names["visited"])), check
        return None, False

    def compare(self, recalled, match) -> None:
        """Check mode: the reused verdict against the full analysis' one."""
        diff = [f.name for f in dataclasses.fields(match)
                if not _same(getattr(recalled, f.name), getattr(match, f.name))]
        if diff:
            MISMATCHES.append((match.output.name, diff))
            log.error("fsa_compile: the verdict reused for %s differs from its own analysis in %s",
                      match.output.name, ", ".join(diff))


def _same(a, b) -> bool:
    if isinstance(a, (frozenset, set)):
        return a == b  # of nodes: by identity
    return a is b if hasattr(a, "graph") else a == b


# the memo of every pass in this process
SHARED = Memo()
