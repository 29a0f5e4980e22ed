import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def confirm_earlier_accounts(apps, schema_editor):
    """Before this table, a personal tenant's trial credit (ledger key "trial") was granted only
    when its owner followed the confirmation link or an operator made the account: those owners
    count as confirmed, and so do staff. Everyone else confirms with the link (resend it from the
    dashboard); nothing else can tell a squatted address from a real one."""
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    Membership = apps.get_model("accounts", "Membership")
    LedgerEntry = apps.get_model("billing", "LedgerEntry")
    EmailConfirmation = apps.get_model("accounts", "EmailConfirmation")
    trial_tenants = LedgerEntry.objects.filter(idempotency_key="trial", tenant__personal=True).values("tenant_id")
    owners = set(Membership.objects.filter(tenant_id__in=trial_tenants, role="owner").values_list("user_id", flat=True))
    owners |= set(User.objects.filter(is_staff=True).values_list("pk", flat=True))
    for user in User.objects.filter(pk__in=owners).iterator():
        email = (user.email or user.username or "").lower()
        if "@" in email:
            EmailConfirmation.objects.get_or_create(user=user, defaults={"email": email, "how": "before"})


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_invitation'),
        ('billing', '0004_price_book_ledger_metering'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='EmailConfirmation',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('email', models.EmailField(max_length=254)),
                ('how', models.CharField(choices=[('link', 'Link'), ('operator', 'Operator'), ('before', 'confirmed before this table (trial credit, staff)')], max_length=10)),
                ('confirmed_at', models.DateTimeField(auto_now_add=True)),
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='email_confirmation', to=settings.AUTH_USER_MODEL)),
            ],
        ),
        migrations.RunPython(confirm_earlier_accounts, migrations.RunPython.noop),
    ]
