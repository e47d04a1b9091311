# Sourced by the GPU scripts: the device machine has no network, so nothing is pip-installed.
# The checkout goes on the path with the entry point's metadata beside it, so backend="fsa"
# resolves in scripts that never import fsa_compile (examples/train.py).
export PYTHONUNBUFFERED=1
EP=/tmp/fsa_ep/fsa_compile-0.1.0.dist-info
mkdir -p $EP
printf 'Metadata-Version: 2.1\nName: fsa_compile\nVersion: 0.1.0\n' > $EP/METADATA
printf '[torch_dynamo_backends]\nfsa = fsa_compile.backend:fsa_backend\n' > $EP/entry_points.txt
export PYTHONPATH=$PWD:/tmp/fsa_ep
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
