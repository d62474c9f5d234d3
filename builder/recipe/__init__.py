"""Recipe files: strict YAML -> located, substituted, checked model values."""

from builder.recipe.load import load_recipe, read_recipe, recipe_for

__all__ = ["load_recipe", "read_recipe", "recipe_for"]
