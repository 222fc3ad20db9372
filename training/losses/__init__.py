"""Losses, one small module each; ``LOSSES`` maps config names to builders."""
