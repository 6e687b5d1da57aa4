"""blurset model."""
