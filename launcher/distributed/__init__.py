"""Scaling a Run out: DeepSpeed ZeRO configs from recipes, and Ray Train workers that execute the Run."""
