"""Declarative files: parse them, plan against what runs, carry the plan out."""
