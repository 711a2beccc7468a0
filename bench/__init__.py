"""The benchmarks, a package run from the checkout's root: ``python -m bench.NAME`` (see bench/README.md)."""
