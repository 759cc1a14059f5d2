"""Embedded servers and an NHS England simulator, for the demo and end-to-end tests."""
