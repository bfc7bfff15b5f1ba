"""Building blocks shared by every source: partitions, validation with quarantine, IO managers."""
