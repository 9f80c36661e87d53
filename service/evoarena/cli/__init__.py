"""The `evoarena` command: `main.py` parses the command line and runs one command; each other
module here is a command (submit, status, watch, export, sample)."""
