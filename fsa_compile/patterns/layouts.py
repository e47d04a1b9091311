"""The tensor layouts a pattern may meet, as the role of each dim.

Roles: ``b`` batch, ``t`` token, ``h`` key/value head, ``g`` head inside a GQA group, ``hq`` query
head (``h * G + g``, the grouping ``repeat_interleave`` gives), ``qg`` query head grouped the other
way (``g * H + h``: keys repeated by ``k.repeat(1, G, 1, 1)`` or einops' ``(g h)``), ``d`` head
dim, ``i`` slot of the selection. A pattern reads an element's coordinates through a layout to
learn its roles, and the rewrite turns the matched tensors into the op's ``[B, T, H, D]`` form
with the inverse view (for ``qg``, a copy that regroups the heads).
"""
from __future__ import annotations

from torch import fx

QUERY = {  # also the layouts of the attention output
    "bthd": ("b", "t", "hq", "d"),
    "bhtd": ("b", "hq", "t", "d"),
    "bthgd": ("b", "t", "h", "g", "d"),
    "bhgtd": ("b", "h", "g", "t", "d"),
    "bt(hd)": ("b", "t", "hq*d"),  # a projection's output before its view into heads
    "tbhd": ("t", "b", "hq", "d"),  # sequence first (Megatron's [s, b, h, d])
    "tb(hd)": ("t", "b", "hq*d"),
    # one sequence with the batch dim squeezed away (B = 1)
    "thd": ("t", "hq", "d"),
    "htd": ("hq", "t", "d"),
    "thgd": ("t", "h", "g", "d"),
    "t(hd)": ("t", "hq*d"),
    # query heads g-major (``hq = g * H + h``); after the others, so that with G = 1 or H = 1
    # (where both read alike) the rewrite needs no permutation
    "bt(gh)d": ("b", "t", "qg", "d"),
    "b(gh)td": ("b", "qg", "t", "d"),
    "t(gh)d": ("t", "qg", "d"),
    "(gh)td": ("qg", "t", "d"),
}
KEY = {
    "bthd": ("b", "t", "h", "d"), "bhtd": ("b", "h", "t", "d"), "bt(hd)": ("b", "t", "h*d"),
    "tbhd": ("t", "b", "h", "d"), "tb(hd)": ("t", "b", "h*d"),
    "thd": ("t", "h", "d"), "htd": ("h", "t", "d"), "t(hd)": ("t", "h*d"),
}
MERGED = {"hq*d": ("hq", "d"), "h*d": ("h", "d")}
SELECTION = {
    "bthn": ("b", "t", "h", "i"), "bhtn": ("b", "h", "t", "i"), "tbhn": ("t", "b", "h", "i"),
    "thn": ("t", "h", "i"), "htn": ("h", "t", "i"),
}


def decode(layout: tuple, coords: tuple, G: int = 1, D: int = 1, H: int = 1) -> dict:
    """Roles of an element's coordinates; ``hq`` is derived from ``h`` and ``g`` when split (or
    from a g-major ``qg`` with ``H`` heads), and a merged ``heads * D`` dim is split with the head
    dim ``D``."""
    r = dict(zip(layout, coords))
    if "qg" in r:
        r["g"], r["h"] = divmod(r.pop("qg"), H)
    for merged, (outer, inner) in MERGED.items():
        if merged in r:
            r[outer], r[inner] = divmod(r.pop(merged), D)
    if "g" in r:
        r["hq"] = r["h"] * G + r["g"]
    r.setdefault("b", 0)
    return r


def with_d(layout: tuple, coords: tuple, d: int, D: int) -> tuple:
    """``coords`` with the head-dim coordinate set to ``d`` (also inside a merged ``heads * D``)."""
    out = list(coords)
    for i, role in enumerate(layout):
        if role == "d":
            out[i] = d
        elif role in MERGED:
            out[i] = out[i] // D * D + d
    return tuple(out)


def with_head(layout: tuple, coords: tuple, b: int, hq: int, G: int, D: int, H: int = 1) -> tuple:
    """``coords`` moved to batch ``b`` and query head ``hq`` (split into ``h``, ``g`` or merged
    with the head dim where the layout does that); other coordinates stay."""
    out = list(coords)
    for i, role in enumerate(layout):
        if role == "b":
            out[i] = b
        elif role == "hq":
            out[i] = hq
        elif role == "h":
            out[i] = hq // G
        elif role == "g":
            out[i] = hq % G
        elif role == "qg":
            out[i] = hq % G * H + hq // G
        elif role == "hq*d":
            out[i] = hq * D + out[i] % D
    return tuple(out)


def sizes(layout: tuple, shape: tuple, D: int = 1) -> dict:
    """Sizes of the roles; a merged dim must be a multiple of the head dim ``D``."""
    z = dict(zip(layout, shape))
    if "qg" in z:
        z["hq"] = z.pop("qg")
    for merged, (outer, inner) in MERGED.items():
        if merged in z:
            total = z.pop(merged)
            z[outer], z[inner] = (total // D, D) if total % D == 0 else (-1, -1)
    z.setdefault("b", 1)
    return z


def _regroup(graph: fx.Graph, node: fx.Node, layout: tuple, outer: int, inner: int) -> tuple:
    """The heads dim ``outer x inner`` as ``inner x outer`` (a copy: no view can do it), and the
    layout with ``hq`` for ``qg``."""
    i = layout.index("qg")
    split = graph.call_method("unflatten", (node, i, (outer, inner)))
    swapped = graph.call_method("transpose", (split, i, i + 1))
    return graph.call_method("flatten", (swapped, i, i + 1)), tuple("hq" if r == "qg" else r for r in layout)


def to_bthd(graph: fx.Graph, node: fx.Node, layout: tuple, D: int = 1, H: int = 1, G: int = 1) -> fx.Node:
    """Insert the view that turns ``node`` (in ``layout``) into ``[B, T, heads, D]``."""
    if "qg" in layout:
        node, layout = _regroup(graph, node, layout, G, H)
    if "b" not in layout:
        node = graph.call_method("unsqueeze", (node, 0))
        layout = ("b",) + tuple(layout)
    names = "".join(r.replace("hq", "q") for r in layout)
    if names[:2] == "tb":  # sequence first: a transposed view, then as batch first
        return to_bthd(graph, graph.call_method("transpose", (node, 0, 1)), ("b", "t") + tuple(layout[2:]), D)
    if names in ("btq*d", "bth*d"):
        return graph.call_method("unflatten", (node, 2, (-1, D)))
    if names in ("bthd", "btqd", "bthi"):
        return node
    if names in ("bhtd", "bqtd", "bhti"):
        return graph.call_method("transpose", (node, 1, 2))
    if names == "bthgd":
        return graph.call_method("flatten", (node, 2, 3))
    if names == "bhgtd":
        perm = graph.call_method("permute", (node, 0, 3, 1, 2, 4))
        return graph.call_method("flatten", (perm, 2, 3))
    raise ValueError(f"no view for layout {layout}")


def from_bthd(graph: fx.Graph, node: fx.Node, layout: tuple, H: int, G: int) -> fx.Node:
    """Insert the view that turns an op output ``[B, T, HQ, D]`` into ``layout``."""
    if "qg" in layout:
        out = from_bthd(graph, node, tuple("hq" if r == "qg" else r for r in layout), H, G)
        return _regroup(graph, out, layout, H, G)[0]
    if "b" not in layout:
        return graph.call_method("squeeze", (from_bthd(graph, node, ("b",) + tuple(layout), H, G), 0))
    names = "".join(r.replace("hq", "q") for r in layout)
    if names[:2] == "tb":
        batch_first = from_bthd(graph, node, ("b", "t") + tuple(layout[2:]), H, G)
        return graph.call_method("transpose", (batch_first, 0, 1))
    if names == "btq*d":
        return graph.call_method("flatten", (node, 2, 3))
    if names == "btqd":
        return node
    if names == "bqtd":
        return graph.call_method("transpose", (node, 1, 2))
    split = graph.call_method("unflatten", (node, 2, (H, G)))
    if names == "bthgd":
        return split
    if names == "bhgtd":
        return graph.call_method("permute", (split, 0, 2, 3, 1, 4))
    raise ValueError(f"no view for layout {layout}")
