"""Tools for people and tests: the embedded stack, a fake marketplace, the soak, the invariant
checker, the README's sessions, the deploy test (the benchmark is bench/)."""
