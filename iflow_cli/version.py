"""iflow --version. Kept out of __init__ so that it imports the same under a namespace-style editable install."""

__version__ = "0.1.0"
