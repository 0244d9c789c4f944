"""ftl: recipes in, fine-tuning runs out."""

__version__ = "0.1.0"
