"""sfsign."""
