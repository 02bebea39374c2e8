"""The UI-free core: no textual, no rich. Every front end (CLI, TUI, server) drives this code."""
