"""Adapters: one external system each; library exceptions become seftpilot.errors here."""
