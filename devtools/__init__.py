"""Tools for people and tests: the embedded stack, a fake marketplace, the benchmark."""
