"""Running taskwire's processes locally: for `make run`, the tests and the benchmarks."""
