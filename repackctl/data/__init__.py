"""Image sources (built-in, image folders, ImageNet), the ADM center crop, and loaders over the cache."""
