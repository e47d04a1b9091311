"""Print the Dynamo graph of one eager form (every node's op and target) and what the pass did.

    python benchmarks/graph_dump.py mask_compare_any [--cuda]

For a form that one torch version rewrites and another does not: the graphs differ somewhere.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import fsa_compile  # noqa: E402
from fsa_compile.patterns.forms import FORMS, to_layout  # noqa: E402
from fsa_compile.patterns.ops import canon  # noqa: E402
from fsa_compile.testing import Shape, make_inputs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("form")
    p.add_argument("--cuda", action="store_true")
    args = p.parse_args()
    form = FORMS[args.form]
    q, k, v, idx, bs = make_inputs(Shape(1, 300, 2, 2, 64, 32, 4), "unique", 7)
    tensors = to_layout(form.layout, q, k, v, idx)
    if args.cuda:
        tensors = tuple(t.cuda() for t in tensors)

    def show(gm, example_inputs):
        for n in gm.graph.nodes:
            c = canon(n)
            print(f"{n.op:14s} {str(n.target)[:60]:60s} canon={c.name if c else None}")
        return gm.forward

    print(torch.__version__)
    torch.compile(form.fn, backend=show)(*tensors, bs)
    torch._dynamo.reset()
    print(fsa_compile.explain(form.fn, *tensors, bs))


if __name__ == "__main__":
    main()
