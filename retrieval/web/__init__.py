"""The shop's pages: home and search by photo, categories, garments, media, error pages."""
