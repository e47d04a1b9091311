"""``explain(fn, *args)``: compile with the fsa backend and report what was rewritten and why not."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Report:
    rewrites: list = field(default_factory=list)
    misses: list = field(default_factory=list)
    others: list = field(default_factory=list)
    graphs: int = 0
    output: Any = None

    def __str__(self) -> str:
        lines = [f"fsa_compile: {len(self.rewrites)} rewrite(s), {len(self.misses)} near miss(es) in {self.graphs} graph(s)"]
        for r in self.rewrites:
            lines.append(f"  rewrote {r}")
        for m in self.misses:
            lines.append(f"  not rewritten: {m}")
        for r in self.others:
            lines.append(f"  also rewrote {r}")
        return "\n".join(lines)


def explain(fn, *args, options: dict | None = None, **kwargs) -> Report:
    """Compile ``fn`` with ``backend="fsa"`` on these inputs, run it once, and report.

    ``report.rewrites``: one entry per rewritten subgraph (pattern, shapes, options, plan);
    ``report.misses``: subgraphs that looked like selected attention but were left alone, each with
    the reason; ``report.others``: the top-k calls put on the row top-k op (the selection's
    top-n); ``report.output``: what the compiled call returned.
    """
    from . import backend

    results: list = []
    backend._collectors.append(results)
    try:
        def fsa(gm, example_inputs):
            return backend.fsa_backend(gm, example_inputs, options=options)

        compiled = torch.compile(fn, backend=fsa)
        out = compiled(*args, **kwargs)
    finally:
        backend._collectors.remove(results)
    report = Report(graphs=len(results), output=out)
    for r in results:
        report.rewrites.extend(r.rewrites)
        report.misses.extend(r.misses)
        report.others.extend(r.others)
    return report
