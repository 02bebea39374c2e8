"""Subcommands of `huozi-local`. Each module: `register(subparsers)`; heavy imports stay inside
handlers so `--help` never loads llama_cpp or textual."""
