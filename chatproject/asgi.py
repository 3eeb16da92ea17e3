"""The ASGI application: Django (middleware hooks inline, chatproject.middleware.ASGIHandler)
behind a door that refuses a chat turn at once when this process is full (chat.capacity)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application

from chat.capacity import refuse_when_full  # noqa: E402  (needs Django set up)
from chatproject.middleware import ASGIHandler  # noqa: E402

django_application = ASGIHandler()
application = refuse_when_full(django_application)
