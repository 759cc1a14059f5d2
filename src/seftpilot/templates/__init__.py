"""Package data: templates (example settings, digests, alerts)."""
