"""Everything durable: blob files on the filesystem and the metadata index in RocksDB."""
