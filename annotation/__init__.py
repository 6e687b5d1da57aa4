"""blurset annotation."""
