"""Kinetics-600 reproduction helpers (see README.md here)."""
