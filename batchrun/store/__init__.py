"""What a run keeps on disk: the run directory, its record files and checkpoint, usage, the response cache."""
