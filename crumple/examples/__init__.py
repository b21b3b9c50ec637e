"""Worked examples that ship with crumple."""
