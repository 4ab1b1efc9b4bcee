"""`<id:pk>` in URL patterns: a database id. Digit strings too long to be one do not match (a 404), where
`<int:pk>` would pass them on and the database query would overflow (a 500)."""
from django.urls import register_converter


class DatabaseId:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(value)


register_converter(DatabaseId, "id")
