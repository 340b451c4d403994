"""Seeded exercises with checks and answers on demand, one module per chapter."""

from vbook.exercises.base import Exercise, Feedback, Solution

__all__ = ["Exercise", "Feedback", "Solution"]
