import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
django_application = get_asgi_application()

from chat.capacity import refuse_when_full  # noqa: E402  (needs Django set up)

# A chat turn that arrives while this process is full is refused before Django runs (503).
application = refuse_when_full(django_application)
