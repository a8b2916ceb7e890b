"""kakumei's test suite. A package so that its shared modules import as `tests.fixtures.*`
and `tests.support` from the repository root (pytest's `pythonpath` setting)."""
