"""The command-line tools (``python tools/<name>.py``), also importable from the checkout root as ``tools.<name>``."""
