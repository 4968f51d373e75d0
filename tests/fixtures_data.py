"""Data fixtures: a tiny synthetic benchmark written once per test session."""
