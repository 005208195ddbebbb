"""Fake radios that speak the real device protocols, for hobbyists without hardware and tests."""
