from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create (or reuse) a demo user and a staff user, and print their credentials and tokens."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")
        parser.add_argument("--staff-username", default="staff")
        parser.add_argument("--staff-password", default="staff-password")

    def handle(self, *args, **options):
        User = get_user_model()
        rows = [
            (options["username"], options["password"], False),
            (options["staff_username"], options["staff_password"], True),
        ]
        for username, password, is_staff in rows:
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff = user.is_superuser = is_staff
                user.save()
            token, _ = Token.objects.get_or_create(user=user)
            kind = "staff (admin)" if is_staff else "demo"
            shown = password if created else "(unchanged; set when first created)"
            self.stdout.write(
                self.style.SUCCESS(
                    f"{kind} user: {username}  password: {shown}  token: {token.key}"
                )
            )
