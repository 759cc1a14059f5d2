"""Reliability under faults: a chaos proxy, SIGKILL at random points, a full or read-only disk."""
