"""guardrsft: reasoning safety classifiers with the GuardReasoner R-SFT recipe."""
__version__ = "0.1.0"
