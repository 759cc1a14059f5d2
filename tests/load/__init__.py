"""load tests (issue 8): see docs/RELIABILITY.md."""
