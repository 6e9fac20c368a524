"""Built-in scoring plugins (one file each)."""
