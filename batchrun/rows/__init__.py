"""Rows on their way to a request: input sources, ids, templates, request bodies, structured-output judging."""
