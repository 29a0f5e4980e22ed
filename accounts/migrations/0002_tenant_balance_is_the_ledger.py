"""`Tenant.balance` is gone: billing 0004 turned each balance into an opening credit, and the
balance is the ledger's sum from now on (issue 18)."""

import django.core.validators
from decimal import Decimal
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
        ('billing', '0004_price_book_ledger_metering'),
    ]

    operations = [
        migrations.RemoveField(
            model_name='tenant',
            name='balance',
        ),
        migrations.AlterField(
            model_name='tenant',
            name='spend_limit',
            field=models.DecimalField(blank=True, decimal_places=6, help_text="monthly spend cap in USD; empty for none (the balance is the billing ledger's sum)", max_digits=14, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
    ]
