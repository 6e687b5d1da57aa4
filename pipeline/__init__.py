"""blurset pipeline."""
