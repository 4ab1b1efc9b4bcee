"""Django project package: settings, URLs, WSGI. The domains live in catalog/ and matching/."""
