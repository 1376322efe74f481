"""The methods the chapters teach: losses, step functions and their training recipes, one module
each."""
