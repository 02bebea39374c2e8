"""Small widgets, each testable in a tiny host App."""
