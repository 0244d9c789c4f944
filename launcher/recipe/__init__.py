"""The recipe: schema, loading (YAML, extends, overrides) and the rules between settings."""

from ftl.launcher.recipe.loader import LoadedRecipe, load_recipe
from ftl.launcher.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "load_recipe"]
