"""Package data: cohort header profiles (YAML)."""
