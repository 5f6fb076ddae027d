"""hspi: hardware and software platform inference."""

__version__ = "0.1.0"
