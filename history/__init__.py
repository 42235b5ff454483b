"""The history store: schema and migrations, the run lock, change records, announced
windows, metrics and state intervals, the interval fold and the import command."""
