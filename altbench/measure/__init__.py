"""Timers, memory, analytic cost models and environment capture."""
