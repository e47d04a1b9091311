"""``python -m fsa_compile <command>``; commands: ``bench`` (see :mod:`fsa_compile.bench`)."""
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fsa_compile bench [--help] [options]")
        return 0 if argv else 2
    if argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    print(f"unknown command {argv[0]!r}; known: bench", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
