"""The imperative shell: claim, decide, act, record, repeat."""
