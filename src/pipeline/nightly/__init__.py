"""Nightly retraining: lock, what is new, warm-started challenger, champion/challenger promotion, interest profiles."""

from pipeline.nightly.lock import LockHeld
from pipeline.nightly.night import EXIT_CODES, EXIT_LOCK_HELD, NightResult, nightly

__all__ = ["EXIT_CODES", "EXIT_LOCK_HELD", "LockHeld", "NightResult", "nightly"]
