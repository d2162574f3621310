"""The run loops: the online and batch lanes' loops, what they share, the ledger, repairs, shards, progress."""
