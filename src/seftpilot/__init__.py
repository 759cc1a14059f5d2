"""seftpilot."""
