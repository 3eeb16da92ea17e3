"""The ASGI application: Django (middleware hooks inline, chatproject.middleware.ASGIHandler)
behind a door that refuses a chat turn at once when this process is full (chat.capacity)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application

from django.urls import get_resolver  # noqa: E402

from chat.capacity import refuse_when_full  # noqa: E402  (needs Django set up)
from chat.llm import get_chat_model  # noqa: E402
from chatproject.middleware import ASGIHandler  # noqa: E402

django_application = ASGIHandler()
application = refuse_when_full(django_application)

# Loaded now, before the server takes a request, not on the event loop under the first turns:
# the model's client (`import openai`: ~0.5 s of CPU, the event loop stopped ~1 s at 1,000 users
# in each worker's first second, bench/concurrency.py) and the URL map.
get_chat_model()
get_resolver().url_patterns  # noqa: B018  (imports every view)
