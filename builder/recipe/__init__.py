"""Recipe files: strict YAML -> located, substituted, checked model values."""

from builder.recipe.parse import load_recipe

__all__ = ["load_recipe"]
