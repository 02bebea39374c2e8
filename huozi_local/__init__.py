"""huozi-local: run the huozi 3.0 chat model on your own machine, offline."""

__version__ = "0.1.0"
