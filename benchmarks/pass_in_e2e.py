"""`bench --e2e` with the pattern pass timed from outside, for any checkout of fsa_compile:

    python benchmarks/pass_in_e2e.py REPO --T 32768 --layers 2 --backends fsa --steps 5

REPO goes first on the path (an older commit's tree, say, from `git archive`), and every
`rewrite_graph` call prints its time; the rest of the arguments are `bench --e2e`'s.
"""
import sys, time
repo = sys.argv[1]
sys.path.insert(0, repo)
import fsa_compile.backend as B
orig = B.rewrite_graph
def timed(*a, **k):
    t = time.perf_counter(); r = orig(*a, **k)
    print(f"[{repo}: pattern pass {time.perf_counter() - t:.1f} s, {len(r.rewrites)} rewrites]", flush=True)
    return r
B.rewrite_graph = timed
from fsa_compile import bench_e2e
sys.exit(bench_e2e.main(sys.argv[2:]))
