"""The book machinery: the runner (``python -m helpers.book``), a chapter's life cycle, parameter
schemas and notebook display helpers. Nothing here trains a network."""
