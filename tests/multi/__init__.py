"""carmulti tests (a package so test module names never clash with tests/core)."""
