"""The Textual app. Screens and widgets only draw; workers call the core and post messages."""
