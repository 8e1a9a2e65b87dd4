"""Nightly retraining: lock, what is new, warm-started challenger, champion/challenger promotion, interest profiles."""

from pipeline.recipes.nightly.lock import LockHeld
from pipeline.recipes.nightly.night import EXIT_CODES, EXIT_LOCK_HELD, NightResult, nightly

__all__ = ["EXIT_CODES", "EXIT_LOCK_HELD", "LockHeld", "NightResult", "nightly"]
