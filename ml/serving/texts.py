"""Text inputs of the text tower, built in one place for training and serving (no torch import)."""


def product_text(title: str, description: str) -> str:
    """What the text tower reads for a product: its title, then its description."""
    return ". ".join(part.strip().rstrip(".") for part in (title, description) if part and part.strip())
