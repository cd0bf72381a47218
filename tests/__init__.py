"""The test suite (a package so that tests.support imports by its full name)."""
