"""The app's screens: first-run setup, model loading, chat, settings, small dialogs."""
