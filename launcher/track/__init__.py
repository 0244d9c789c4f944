"""Experiment trackers (MLflow, Weights & Biases): one run per ftl run, search, trial, fold or bench cell.

Only base and recipe below it; the train layer (a Trainer callback), tune and bench use it. The trackers'
libraries load inside functions, when a recipe asks for them.
"""
