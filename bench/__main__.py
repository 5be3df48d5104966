"""`python -m bench` (make bench): the whole run, bench/suite.py; `--help` for its sizes."""

from bench.suite import main

main()
