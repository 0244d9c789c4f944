"""`ftl bench`: timed training steps of a recipe over a matrix of settings, with MFU (see `runner.py`)."""
