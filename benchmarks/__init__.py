"""Speed and memory benchmarks, run by `make bench`; figures go to `benchmarks/RESULTS.md`."""
