"""Hyperparameter search and cross-validation: Ray Tune trials, Optuna samplers, each trial an ftl run."""
