"""Rows on their way to a request: input sources, ids, templates, request bodies and their token estimates,
structured-output judging."""
