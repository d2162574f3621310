"""What the read-only commands compute: preview and show, validate, estimate, status, report, export."""
