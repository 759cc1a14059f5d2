"""Package data: the default classification rules that `seftpilot init` writes."""
