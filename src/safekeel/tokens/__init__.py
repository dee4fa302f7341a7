"""Safety tokens: identification (paper §2.1), the portable artifact, and the intervention analysis (§2.2)."""

from safekeel.tokens.artifact import SafetyTokens

__all__ = ["SafetyTokens"]
