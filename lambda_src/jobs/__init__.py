"""Built-in jobs, shipped in every zip."""
