"""``python -m fsa_compile <command>``; commands: ``bench`` (kernels, :mod:`fsa_compile.bench`) and
``bench --e2e`` (the example model per backend, :mod:`fsa_compile.bench_e2e`)."""
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fsa_compile bench [--e2e] [--help] [options]\n\n"
              "  bench          selected attention (each strategy) vs dense SDPA on the GPU: a table, JSON, a plot\n"
              "  bench --e2e    the example NSA model trained and prefilled per backend (--cpu-smoke: tiny, CPU)\n\n"
              "python -m fsa_compile bench --help lists the options.")
        return 0 if argv else 2
    if argv[0] == "bench" and "--e2e" in argv[1:]:
        from .bench_e2e import main as e2e_main

        return e2e_main([a for a in argv[1:] if a != "--e2e"])
    if argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    print(f"unknown command {argv[0]!r}; known: bench", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
